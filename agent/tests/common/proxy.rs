//! A TCP proxy on loopback between the agent and OpenBao that misbehaves on demand:
//! forward, drop every connection, hang (accept and never answer), or delay every
//! chunk from upstream. TLS passes through untouched, so the agent still verifies
//! OpenBao's certificate (issued for 127.0.0.1).
//!
//! Changing the mode cuts every connection opened before, so a pooled keep-alive
//! connection cannot carry on as if nothing happened. The proxy runs on its own
//! current-thread runtime on a thread, and stops when dropped.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes both ways.
    Forward,
    /// Accept and close at once: the client sees the connection dropped.
    Drop,
    /// Accept, read and discard, never answer: the client waits for its timeout.
    Hang,
    /// Forward, but hold every chunk from upstream this long first.
    Delay(Duration),
}

/// Connections handled at once; more are dropped (the agent opens one or two).
const MAX_CONNECTIONS: usize = 32;

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<(Mode, u64)>,
    accepted: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts forwarding from a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = watch::channel((Mode::Forward, 0u64));
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serve(listener, upstream, rx, count));
        });
        Proxy {
            port,
            mode: tx,
            accepted,
            thread: Some(thread),
        }
    }

    /// The proxy in front of the server at `addr` (`https://127.0.0.1:<port>`).
    pub fn in_front_of(addr: &str) -> Proxy {
        let hostport = addr.rsplit("://").next().unwrap().trim_end_matches('/');
        Proxy::start(hostport.parse().unwrap())
    }

    /// `https://127.0.0.1:<port>`, for `vault.addr`.
    pub fn addr(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Switches the mode and cuts every open connection.
    pub fn set(&self, mode: Mode) {
        self.mode.send_modify(|(m, generation)| {
            *m = mode;
            *generation += 1;
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Closing the channel ends the accept loop and every connection.
        let (tx, _) = watch::channel((Mode::Drop, 0));
        drop(std::mem::replace(&mut self.mode, tx));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    upstream: SocketAddr,
    mut rx: watch::Receiver<(Mode, u64)>,
    accepted: Arc<AtomicUsize>,
) {
    let listener = TcpListener::from_std(listener).unwrap();
    let live = Arc::new(AtomicUsize::new(0));
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            continue;
        }
        let (mode, generation) = *rx.borrow();
        let mut conn_rx = rx.clone();
        let live = live.clone();
        live.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            // Ends when the mode changes or the proxy is dropped.
            let cut = async move {
                while conn_rx.changed().await.is_ok() {
                    if conn_rx.borrow().1 != generation {
                        return;
                    }
                }
            };
            tokio::select! {
                () = cut => {}
                () = handle(stream, upstream, mode) => {}
            }
            live.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn handle(mut client: TcpStream, upstream: SocketAddr, mode: Mode) {
    let delay = match mode {
        Mode::Drop => return,
        Mode::Hang => {
            let mut buf = [0u8; 4096];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
            // The client closed; nothing to answer.
            return;
        }
        Mode::Forward => Duration::ZERO,
        Mode::Delay(d) => d,
    };
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = sr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
