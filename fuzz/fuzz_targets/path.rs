//! `normalize` never panics on any request path, and its normal forms are
//! normal (idempotent, no empty, `.` or `..` segment, no needless escape).
//! See `moat::proxy::path::fuzzing::fuzz_check`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat::proxy::path::fuzzing::fuzz_check(data));
