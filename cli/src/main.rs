//! The `conclave` binary: all logic is in the `conclave_cli` library.
fn main() -> std::process::ExitCode {
    conclave_cli::main()
}
