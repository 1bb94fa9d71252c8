//! Runs a scenario file and writes its trace: `cargo run -p conclave-sim --example trace -- FILE OUT`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let text = std::fs::read_to_string(&args[1]).expect("scenario");
    let s = conclave_sim::Scenario::from_toml(&text).expect("valid");
    let mut out = std::fs::File::create(&args[2]).expect("out");
    let r = conclave_sim::Simulation::new(s)
        .expect("sim")
        .with_trace(&mut out)
        .run();
    println!("{r}");
}
