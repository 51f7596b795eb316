//! Sandbox pieces: the host-side services a sandboxed child talks to.

#[cfg(target_os = "linux")]
pub mod bpf;
#[cfg(target_os = "linux")]
pub mod cgroup;
pub mod dns;
pub mod envmode;
#[cfg(target_os = "linux")]
pub mod init;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod nft;
#[cfg(target_os = "linux")]
pub mod run;
pub mod trust;
