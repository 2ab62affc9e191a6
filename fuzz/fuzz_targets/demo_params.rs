//! Any JSON as a job's parameters, built by every demo factory: refused with a clear error, or
//! a flow within the demo's limits (`baton_cli::demo::fuzz_params`).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(params) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Err(e) = baton_cli::demo::fuzz_params(&params) {
        panic!("{e}");
    }
});
