//! Policy files: any text must compile to a policy or a `PolicyError`,
//! never a panic.
#![no_main]

use clearance::policy::CompiledPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Policy files are read as UTF-8 (`read_to_string`): other bytes never
    // reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(policy) = CompiledPolicy::from_toml_str(text, "fuzz.toml") {
        // Exercise the compiled form's Debug output too (it walks every
        // table the compiler built).
        let _ = format!("{policy:?}");
    }
});
