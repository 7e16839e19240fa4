//! The `berth` CLI: see `berth --help`.

fn main() {
    std::process::exit(berth::cli::main());
}
