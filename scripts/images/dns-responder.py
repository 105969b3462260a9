"""A DNS server for one name, for `make images-check` only.

Answers A queries for NAME with ADDRESS (TTL 5 s), NODATA for other types of NAME and
NXDOMAIN for anything else, on UDP port 53 of a loopback address. It lets the check
prove that a static binary in an empty root filesystem resolves a name through
/etc/resolv.conf, as a pod does through the cluster DNS. Standard library only.

Usage: dns-responder.py LISTEN_ADDRESS NAME ADDRESS
"""
import socket, struct, sys
addr, name, answer = sys.argv[1], sys.argv[2].lower().rstrip('.'), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, 53))
print("listening", flush=True)
while True:
    data, peer = s.recvfrom(512)
    tid, flags, qd = struct.unpack(">HHH", data[:6])
    i, labels = 12, []
    while data[i]:
        labels.append(data[i+1:i+1+data[i]].decode()); i += 1 + data[i]
    qtype, qclass = struct.unpack(">HH", data[i+1:i+5])
    question = data[12:i+5]
    q = ".".join(labels).lower()
    print("query", q, qtype, flush=True)
    if q == name and qtype == 1:
        rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + socket.inet_aton(answer)
        reply = struct.pack(">HHHHHH", tid, 0x8180, 1, 1, 0, 0) + question + rr
    else:
        rcode = 0 if q == name else 3
        reply = struct.pack(">HHHHHH", tid, 0x8180 | rcode, 1, 0, 0, 0) + question
    s.sendto(reply, peer)
