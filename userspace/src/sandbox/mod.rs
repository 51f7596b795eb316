//! Sandbox pieces: the host-side services a sandboxed child talks to.

#[cfg(target_os = "linux")]
pub mod argv;
#[cfg(target_os = "linux")]
pub mod bpf;
#[cfg(target_os = "linux")]
pub mod cgroup;
pub mod dns;
#[cfg(target_os = "linux")]
pub mod docker;
#[cfg(target_os = "linux")]
pub mod envinit;
pub mod envmode;
pub mod image;
#[cfg(target_os = "linux")]
pub mod init;
#[cfg(target_os = "linux")]
pub mod libnft;
pub mod mask;
#[cfg(target_os = "linux")]
pub mod netns;
pub mod nft;
#[cfg(target_os = "linux")]
pub mod pid1;
pub mod probe;
#[cfg(target_os = "linux")]
pub mod run;
#[cfg(unix)]
pub mod signals;
#[cfg(target_os = "linux")]
pub mod sys;
pub mod trust;
