//! `sidekey-demo`: the whole Sidekey flow on real parts, narrated. Needs root.

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdout = std::io::stdout();
    match sidekey_tests::demo::run(&mut stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nsidekey-demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}
