//! The `baton` binary: all of it lives in the `baton_cli` library.

fn main() {
    std::process::exit(baton_cli::main());
}
