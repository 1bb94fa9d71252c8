//! The seed generator still works and its seeds still reach deep: every target gets seeds,
//! and the participant fixture signs the seed session (so the fuzzer starts from a valid
//! commit → sign exchange, not only from the outer decoder).

#[test]
fn the_generator_seeds_every_target() {
    let dir = tempfile::tempdir().unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let counts = conclave_fuzzing::write_seeds(dir.path(), &repo).unwrap();
    for (name, _) in conclave_fuzzing::TARGETS {
        assert!(
            counts.get(name).copied().unwrap_or(0) > 0,
            "{name} got no seeds"
        );
    }
    let signed = std::fs::read_dir(dir.path().join("participant"))
        .unwrap()
        .filter(|e| {
            let data = std::fs::read(e.as_ref().unwrap().path()).unwrap();
            conclave_fuzzing::participant_shares(&data) > 0
        })
        .count();
    assert!(signed >= 2, "the seed sessions are signed ({signed})");
}
