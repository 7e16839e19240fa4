//! The `berth` CLI: see `berth --help`.

fn main() {
    // Like other command-line tools, die quietly of SIGPIPE when the reader goes away
    // (`berth ps | head`) instead of panicking in println!.
    // SAFETY: resetting a signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(berth::cli::main());
}
