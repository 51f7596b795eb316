//! Streaming substitution, cut into any chunks, gives exactly what one-shot
//! `apply` gives. The input encodes the patterns and the chunking; see
//! `moat::proxy::substitute::fuzzing::fuzz_check`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat::proxy::substitute::fuzzing::fuzz_check(data));
