//! Writes the seed corpora: `cargo run -p conclave-fuzzing --bin make-corpus [-- DIR]`
//! (default `fuzz/corpus` of this repository). Existing files are kept; seeds are named by a
//! hash of their content.
fn main() -> anyhow::Result<()> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo.join("fuzz/corpus"));
    let counts = conclave_fuzzing::write_seeds(&dir, &repo)?;
    for (target, n) in counts {
        println!("{target:>20}  {n} seeds");
    }
    Ok(())
}
