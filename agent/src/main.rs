fn main() {
    eprintln!("sidekey-agent: not built yet");
    std::process::exit(64);
}
