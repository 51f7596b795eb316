//! One container run: create it, plumb its network namespace, release the
//! entrypoint, pump stdio and signals, and wait for its exit code.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CreateContainerOptions, KillContainerOptions, ResizeContainerTTYOptions,
};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::engine::{connect, ensure_image, gone, remove, removed};
use super::tty::{RawMode, resize, terminal_size};
use super::{
    BINARY_INSIDE, BUNDLE_INSIDE, DockerError, DockerSpec, HOME_FILES_INSIDE,
    JAVA_TRUSTSTORE_INSIDE, LABEL_HOME, LABEL_RUN, LIB_INSIDE, MOAT_DIR, SYSTEM_BUNDLES,
    WORKSPACE_INSIDE,
};
use crate::net::front::Front;
use crate::net::orig_dst::SoOriginalDst;
use crate::sandbox::{netns, run};

/// How long the entrypoint waits for Moat before giving up.
pub(super) const GO_TIMEOUT: Duration = Duration::from_secs(120);

/// Run the command in a container; its exit code (128+N for signal N).
/// `proxy` is the run's proxy, built once by the session.
pub fn run(spec: DockerSpec, proxy: Arc<dyn Front>) -> Result<i32, DockerError> {
    let rt = crate::net::runtime::runtime()?;
    let docker = rt.block_on(connect())?;
    let image = rt.block_on(ensure_image(
        &docker,
        &spec.image,
        spec.rebuild,
        &spec.events,
    ))?;
    let views = if spec.idmap {
        Views::stage(&spec)?
    } else {
        Views::default()
    };
    let ctl = spec.run_dir.join("container-ctl");
    let listener = make_ctl_socket(&ctl, spec.user)?;
    // The agent's socket: the same kind of directory, for the same user.
    let ssh_dir = ssh_dir(&spec);
    let agent = match (&spec.ssh_agent, &ssh_dir) {
        (Some(agent), Some(dir)) => Some((agent.clone(), make_ctl_socket(dir, spec.user)?)),
        _ => None,
    };
    if let Some((agent, listener)) = agent {
        let _rt = rt.enter();
        rt.spawn(agent.serve(tokio::net::UnixListener::from_std(listener)?));
    }
    let cleanup = || {
        let _ = std::fs::remove_dir_all(&ctl);
        if let Some(dir) = &ssh_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    };
    let tty = nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
        && nix::unistd::isatty(std::io::stdout()).unwrap_or(false);
    let name = format!("moat-{}", spec.id);
    let body = container_body(&spec, &image, &ctl, tty, &views)?;
    let result = rt.block_on(async {
        docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
    });
    let created = match result {
        Ok(c) => c,
        Err(e) => {
            cleanup();
            return Err(e.into());
        }
    };
    if spec.user.0 != 0 {
        rt.block_on(super::passwd::ensure(&docker, &name, spec.user));
    }
    spec.events.emit(
        "container",
        serde_json::json!({"name": name, "id": created.id, "image": image, "tty": tty}),
    );
    let outcome = run_container(&rt, &docker, &spec, proxy, &name, (listener, views), tty);
    if !spec.keep {
        // AutoRemove has usually done it already (or is doing it): the run
        // ends when the container is gone.
        if let Err(e) = rt.block_on(remove(&docker, &name)) {
            tracing::warn!("removing container {name}: {e}");
        }
        rt.block_on(removed(&docker, &name, Duration::from_secs(10)));
    } else {
        eprintln!(
            "moat: kept container {name} (moat destroy {} removes it)",
            spec.id
        );
    }
    cleanup();
    rt.shutdown_timeout(Duration::from_millis(100));
    outcome
}

/// The host directory holding the SSH agent's socket, with `ssh:` grants.
fn ssh_dir(spec: &DockerSpec) -> Option<PathBuf> {
    spec.ssh_agent
        .as_ref()
        .map(|_| spec.run_dir.join("container-ssh"))
}

/// The control directory holding Moat's control socket `sock`, which only
/// the container's user may connect to.
pub(super) fn make_ctl_socket(
    ctl: &Path,
    (uid, gid): (u32, u32),
) -> Result<std::os::unix::net::UnixListener, DockerError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(ctl)?;
    let sock = ctl.join("sock");
    let _ = std::fs::remove_file(&sock);
    let listener = std::os::unix::net::UnixListener::bind(&sock)?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
    let owner = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    nix::unistd::chown(&sock, owner.0, owner.1).map_err(std::io::Error::from)?;
    nix::unistd::chown(ctl, owner.0, owner.1).map_err(std::io::Error::from)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Id-mapped views of the workspace and the `mounts:` sources, attached in
/// the run's directory for the engine to bind from: a file the command
/// (host uid [`super::init::SANDBOX_ID_BASE`](crate::sandbox::init::SANDBOX_ID_BASE) + N) writes there is uid N on
/// disk, so root's files stay root's. Detached when dropped, which is as
/// soon as the container has started (it keeps its own binds).
#[derive(Default)]
pub(super) struct Views {
    /// Host directory → the path of its id-mapped view.
    at: Vec<(PathBuf, PathBuf)>,
}

impl Views {
    fn stage(spec: &DockerSpec) -> Result<Self, DockerError> {
        use std::os::fd::AsFd as _;
        let userns = crate::sandbox::init::sandbox_userns().map_err(std::io::Error::other)?;
        let mut views = Views::default();
        let mut sources = vec![spec.workspace.clone()];
        for m in &spec.mounts {
            sources.push(std::fs::canonicalize(&m.src)?);
        }
        sources.extend(spec.dirs.iter().map(|(src, _, _)| src.clone()));
        for (i, src) in sources.into_iter().enumerate() {
            if views.at.iter().any(|(s, _)| *s == src) || !src.is_dir() {
                continue;
            }
            let view = spec.run_dir.join(format!("idmapped-{i}"));
            std::fs::create_dir_all(&view)?;
            let dir = std::fs::File::open(&src)?;
            let failed = |what: &str, e: nix::Error| {
                std::io::Error::other(format!(
                    "{what} {} for the container: {e} (its filesystem may not support id-mapped mounts)",
                    src.display()
                ))
            };
            let tree =
                crate::sandbox::sys::clone_tree(dir.as_fd()).map_err(|e| failed("cloning", e))?;
            crate::sandbox::sys::idmap(tree.as_fd(), userns.as_fd())
                .map_err(|e| failed("id-mapping", e))?;
            crate::sandbox::sys::move_mount_onto(tree.as_fd(), &view)
                .map_err(|e| failed("attaching", e))?;
            views.at.push((src, view));
        }
        Ok(views)
    }

    /// Where the engine binds `src` from.
    fn of<'a>(&'a self, src: &'a Path) -> &'a Path {
        self.at
            .iter()
            .find(|(s, _)| s == src)
            .map_or(src, |(_, v)| v.as_path())
    }
}

impl Drop for Views {
    fn drop(&mut self) {
        for (_, view) in &self.at {
            let _ = nix::mount::umount2(view, nix::mount::MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(view);
        }
    }
}

pub(super) fn container_body(
    spec: &DockerSpec,
    image: &str,
    ctl: &Path,
    tty: bool,
    views: &Views,
) -> Result<ContainerCreateBody, DockerError> {
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    let exe = std::env::current_exe()?;
    let mut binds = vec![
        format!("{}:{WORKSPACE_INSIDE}", lossy(views.of(&spec.workspace))),
        format!("{}:{BINARY_INSIDE}:ro", lossy(&exe)),
        format!("{}:{MOAT_DIR}/ctl:ro", lossy(ctl)),
        format!("{}:{BUNDLE_INSIDE}:ro", lossy(&spec.bundle)),
        format!("{}:{JAVA_TRUSTSTORE_INSIDE}:ro", lossy(&spec.truststore)),
    ];
    for path in SYSTEM_BUNDLES {
        binds.push(format!("{}:{path}:ro", lossy(&spec.bundle)));
    }
    if let Some(h) = &spec.home_files {
        binds.push(format!("{}:{HOME_FILES_INSIDE}:ro", lossy(h)));
    }
    if let Some(dir) = ssh_dir(spec) {
        binds.push(format!("{}:{MOAT_DIR}/ssh:ro", lossy(&dir)));
    }
    for (src, dst, read_only) in &spec.dirs {
        binds.push(format!(
            "{}:{}{}",
            lossy(views.of(src)),
            lossy(dst),
            if *read_only { ":ro" } else { "" }
        ));
    }
    // Host directory → where the container sees it.
    let mut shown = vec![(spec.workspace.clone(), PathBuf::from(WORKSPACE_INSIDE))];
    for m in &spec.mounts {
        let src = std::fs::canonicalize(&m.src).map_err(|e| {
            std::io::Error::new(e.kind(), format!("mounts: {}: {e}", m.src.display()))
        })?;
        if let Some(mask) = spec.mask.iter().find(|k| src.starts_with(k)) {
            return Err(DockerError::MaskedMount {
                src,
                mask: mask.clone(),
            });
        }
        binds.push(format!(
            "{}:{}{}",
            lossy(views.of(&src)),
            lossy(&m.dst),
            if m.read_only { ":ro" } else { "" }
        ));
        shown.push((src, m.dst.clone()));
    }
    // Deeper than the directory that holds them, so mounted over it.
    let (empty_dir, empty_file) = crate::sandbox::mask::empty_sources(&spec.run_dir)?;
    for mask in &spec.mask {
        let Ok(meta) = std::fs::metadata(mask) else {
            continue;
        };
        for (src, dst) in &shown {
            if let Ok(rel) = mask.strip_prefix(src) {
                let empty = if meta.is_dir() {
                    &empty_dir
                } else {
                    &empty_file
                };
                binds.push(format!("{}:{}:ro", lossy(empty), lossy(&dst.join(rel))));
            }
        }
    }
    // The host's loader and libraries run the binary, whatever the image has.
    let libs = loaded_libraries()?;
    for lib in &libs {
        if let Some(name) = lib.file_name() {
            binds.push(format!(
                "{}:{LIB_INSIDE}/{}:ro",
                lossy(lib),
                name.to_string_lossy()
            ));
        }
    }
    let mut entrypoint = argv_inside(&libs)?;
    entrypoint.push("__container-init".into());
    // Always a flag first: a leading `--` would be eaten by the CLI parser.
    entrypoint.push(if tty { "--tty" } else { "--no-tty" }.into());
    entrypoint.push("--".into());
    let env = spec
        .env
        .iter()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy()))
        .collect();
    let (uid, gid) = spec.user;
    let host_config = HostConfig {
        network_mode: Some("none".into()),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        binds: Some(binds),
        tmpfs: Some([("/tmp".to_string(), "mode=1777,exec".to_string())].into()),
        memory: spec.limits.memory,
        nano_cpus: spec.limits.cpus.map(|c| (c * 1e9) as i64),
        // Gone when it stops (its run ended, or Moat died: see init_main).
        auto_remove: Some(!spec.keep),
        ..Default::default()
    };
    let mut labels: std::collections::HashMap<String, String> =
        [(LABEL_RUN.to_string(), spec.id.clone())].into();
    // $MOAT_HOME/runs/<id> → $MOAT_HOME: `moat clean` of another home (or
    // another user) never touches this container.
    if let Some(home) = spec.run_dir.parent().and_then(Path::parent) {
        labels.insert(LABEL_HOME.to_string(), lossy(home));
    }
    Ok(ContainerCreateBody {
        image: Some(image.into()),
        entrypoint: Some(entrypoint),
        cmd: Some(
            spec.command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        ),
        env: Some(env),
        user: Some(format!("{uid}:{gid}")),
        working_dir: Some(WORKSPACE_INSIDE.into()),
        tty: Some(tty),
        open_stdin: Some(true),
        stdin_once: Some(true),
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        labels: Some(labels),
        host_config: Some(host_config),
        ..Default::default()
    })
}

/// How a program in the container runs Moat's binary: through the host's
/// loader and libraries (bind-mounted at `/.moat/lib`), whatever the image has.
pub fn moat_argv() -> std::io::Result<Vec<String>> {
    argv_inside(&loaded_libraries()?)
}

/// This process's dynamic loader, as the host sees it.
pub fn host_loader() -> std::io::Result<PathBuf> {
    loaded_libraries()?
        .into_iter()
        .find(|p| is_loader(p))
        .ok_or_else(|| std::io::Error::other("cannot find this process's dynamic loader"))
}

fn argv_inside(libs: &[PathBuf]) -> std::io::Result<Vec<String>> {
    let loader = libs
        .iter()
        .find(|p| is_loader(p))
        .and_then(|p| p.file_name())
        .ok_or_else(|| std::io::Error::other("cannot find this process's dynamic loader"))?;
    Ok(vec![
        format!("{LIB_INSIDE}/{}", loader.to_string_lossy()),
        "--library-path".into(),
        LIB_INSIDE.into(),
        BINARY_INSIDE.to_string(),
    ])
}

/// The shared objects this process has mapped (the dynamic loader, libc,
/// libm, libgcc_s, …), from /proc/self/maps: exactly what the binary needs
/// to run elsewhere, without parsing ELF.
pub(super) fn loaded_libraries() -> std::io::Result<Vec<PathBuf>> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    Ok(shared_objects(&maps))
}

/// The distinct `*.so*` file paths of a /proc/PID/maps text, in order.
pub(super) fn shared_objects(maps: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode path (the path may hold spaces).
        let Some(path) = line.splitn(6, char::is_whitespace).nth(5).map(str::trim) else {
            continue;
        };
        let name = path.rsplit('/').next().unwrap_or("");
        if path.starts_with('/')
            && !path.ends_with(" (deleted)")
            && (name.ends_with(".so") || name.contains(".so."))
            && !out.iter().any(|p| p.as_os_str() == path)
        {
            out.push(PathBuf::from(path));
        }
    }
    out
}

/// The dynamic loader (`ld-linux-x86-64.so.2`, `ld-linux-aarch64.so.1`, …).
pub(super) fn is_loader(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ld-linux"))
}

/// Attach, start, plumb, release the entrypoint, pump stdio, wait.
pub(super) fn run_container(
    rt: &crate::net::runtime::ProxyRuntime,
    docker: &Docker,
    spec: &DockerSpec,
    proxy: Arc<dyn Front>,
    name: &str,
    // The control socket's listener, and the views the engine binds from.
    (listener, views): (std::os::unix::net::UnixListener, Views),
    tty: bool,
) -> Result<i32, DockerError> {
    let attached = rt.block_on(docker.attach_container(
        name,
        Some(AttachContainerOptions {
            stream: true,
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        }),
    ))?;
    let started = rt.block_on(docker.start_container(name, None));
    // The container holds its own binds now: the host needs the id-mapped
    // views no longer (a kill -9 from here on leaves none behind).
    drop(views);
    started?;
    let info = rt.block_on(docker.inspect_container(name, None))?;
    let state = info.state.unwrap_or_default();
    let pid = state
        .pid
        .filter(|p| *p > 0)
        .ok_or_else(|| DockerError::NoPid(state.error.unwrap_or_default()))?;
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let net = netns::plumb(&ns, true)?;
    let published = run::publish_in(rt, &ns, &spec.publish)?;
    run::serve_sandbox(rt, proxy, net, Arc::new(SoOriginalDst), &spec.events)?;
    drop(ns);

    // The entrypoint connects first thing; a container that stops before
    // it did (an image it cannot run in) ends the wait.
    let mut ctl = rt.block_on(async {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let mut stopped = docker.wait_container(name, None);
        tokio::select! {
            accepted = listener.accept() => Ok(accepted?.0),
            _ = stopped.next() => Err(DockerError::NoPid(
                "its entrypoint stopped before reaching Moat (see the container's \
                 output above)".into(),
            )),
            _ = tokio::time::sleep(GO_TIMEOUT) => Err(DockerError::NoPid(
                "its entrypoint did not reach Moat in time".into(),
            )),
        }
    })?;

    let raw = if tty { RawMode::enter() } else { None };
    if tty {
        resize(rt, docker, name);
    }
    // Signals to Moat are caught from before the go: `moat stop` may send
    // one as soon as `started` has told it the id.
    let signals: Vec<_> = {
        use tokio::signal::unix::{SignalKind, signal};
        let _rt = rt.enter();
        [
            (SignalKind::terminate(), "SIGTERM"),
            (SignalKind::hangup(), "SIGHUP"),
            (SignalKind::interrupt(), "SIGINT"),
            (SignalKind::window_change(), "SIGWINCH"),
        ]
        .into_iter()
        .filter_map(|(kind, name)| Some((signal(kind).ok()?, name)))
        .collect()
    };
    // Release the entrypoint: the namespace is ready. The connection stays
    // open until the run ends (the entrypoint's lifeline) and brings back
    // the command's exit code.
    rt.block_on(ctl.write_all(b"g"))?;
    crate::runs::started();

    let mut output = attached.output;
    let out_task = rt.spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut stderr = tokio::io::stderr();
        while let Some(Ok(chunk)) = output.next().await {
            use bollard::container::LogOutput;
            let _ = match chunk {
                LogOutput::StdErr { message } => {
                    let r = stderr.write_all(&message).await;
                    let _ = stderr.flush().await;
                    r
                }
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    let r = stdout.write_all(&message).await;
                    let _ = stdout.flush().await;
                    r
                }
                LogOutput::StdIn { .. } => Ok(()),
            };
        }
    });
    let mut input = attached.input;
    rt.spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut input).await;
        let _ = input.shutdown().await;
    });
    // Signals to Moat go to the container's entrypoint, which passes them on.
    {
        let docker = docker.clone();
        let name = name.to_owned();
        rt.spawn(async move {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for (mut s, sig) in signals {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while s.recv().await.is_some() {
                        let _ = tx.send(sig);
                    }
                });
            }
            while let Some(sig) = rx.recv().await {
                if sig == "SIGWINCH" {
                    if tty && let Some((w, h)) = terminal_size() {
                        let _ = docker
                            .resize_container_tty(&name, ResizeContainerTTYOptions { w, h })
                            .await;
                    }
                    continue;
                }
                if sig == "SIGINT" && tty {
                    continue; // the terminal's ^C already went through the pty
                }
                let _ = docker
                    .kill_container(&name, Some(KillContainerOptions { signal: sig.into() }))
                    .await;
            }
        });
    }
    let code = rt.block_on(async {
        // "CODE\n" from the entrypoint just before it exits.
        let mut report = Vec::new();
        let _ = ctl.read_to_end(&mut report).await;
        if let Some(code) = std::str::from_utf8(&report)
            .ok()
            .and_then(|r| r.trim().parse::<i64>().ok())
        {
            if spec.keep {
                // A kept container is stopped (not just about to be) when
                // the run ends.
                let mut stopped = docker.wait_container(name, None);
                let _ = tokio::time::timeout(Duration::from_secs(5), stopped.next()).await;
            }
            return Ok(code);
        }
        // No report: the entrypoint itself was killed (docker kill, OOM).
        let mut wait = docker.wait_container(name, None);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            // Removed already (AutoRemove): it was killed.
            Some(Err(e)) if gone(&e) => Ok(137),
            Some(Err(e)) => Err(DockerError::from(e)),
            None => Err(DockerError::NoPid("the engine lost the container".into())),
        }
    });
    // The last output may still be on its way.
    let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), out_task).await });
    drop(raw);
    drop(published);
    Ok(code?.clamp(0, 255) as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_objects_come_from_the_maps_once_each() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 123 /usr/local/bin/moat
7f0000000000-7f0000001000 r--p 00000000 fd:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000001000-7f0000002000 r-xp 00001000 fd:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000003000-7f0000004000 r--p 00000000 fd:01 2 /usr/lib/x86_64-linux-gnu/libgcc_s.so.1
7f0000005000-7f0000006000 r--p 00000000 fd:01 3 /tmp/gone.so.1 (deleted)
7f0000007000-7f0000008000 rw-p 00000000 00:00 0 [heap]
7f0000009000-7f000000a000 r--p 00000000 fd:01 4 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        let libs = shared_objects(maps);
        assert_eq!(
            libs,
            [
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
        assert!(is_loader(&libs[2]) && !is_loader(&libs[0]));
        // This very process: a loader and a libc at least.
        let here = loaded_libraries().unwrap();
        assert!(here.iter().any(|p| is_loader(p)), "{here:?}");
    }
}
