//! `classify` never panics, and its verdicts keep their promises, on any
//! first bytes a client may send.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat::proxy::peek::fuzzing::fuzz_check(data));
