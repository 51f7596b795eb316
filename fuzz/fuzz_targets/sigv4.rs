//! The aws-chunked re-signer gives the same bytes however its input is cut,
//! keeps the body's length, and whatever `resign` re-signs no longer carries
//! the placeholder key. The input encodes the mode and the chunking; see
//! `moat::proxy::sigv4::fuzzing::fuzz_check`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat::proxy::sigv4::fuzzing::fuzz_check(data));
