//! The SSH host-key watch and the login payload reader never panic, and the
//! watch's verdict does not depend on how the server's bytes arrive.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| moat::ssh::wire::fuzzing::fuzz_check(data));
