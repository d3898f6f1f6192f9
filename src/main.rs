//! The `mica` binary: a thin wrapper over `mica::cli`.
fn main() {
    if let Err(e) = mica::cli::main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
