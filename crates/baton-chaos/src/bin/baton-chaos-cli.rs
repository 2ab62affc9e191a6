//! The `baton` command line, built in this package as well: cargo tells a test the path of its
//! own package's binaries only, and the restart tests run real `baton conductor` processes.
//! It is `baton_cli::main`, exactly what the `baton` binary runs.

fn main() {
    std::process::exit(baton_cli::main());
}
