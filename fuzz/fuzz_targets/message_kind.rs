#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| conclave_fuzzing::message_kind(data));
