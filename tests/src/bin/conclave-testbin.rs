//! `conclave` with the test-only fault-injection hooks compiled in; used by the integration
//! tests only.
fn main() -> std::process::ExitCode {
    conclave_cli::main()
}
