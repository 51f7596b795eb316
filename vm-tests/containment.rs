//! What a hostile command inside `moat run` must not reach, as root (the
//! test) with Moat as root (nft, eBPF), rootless (as nobody) and under sudo:
//! `$MOAT_HOME`, the agent socket and the tools' credential files even when
//! the workspace contains them; the host's sysctls, /sys, /var, /dev, host
//! sockets under /run, other homes, the session keyring; capabilities that
//! reach hidden files by handle; the run's cgroup. Every probe writes only
//! inside the sandbox or into this test's temp dir, and the host's values
//! are read back unchanged. Nothing here talks to a network.

#![cfg(target_os = "linux")]

#[path = "../tests/common/mod.rs"]
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

const REAL: &str = "ghp_ContainmentRealToken0123456789abcdef";
const NOBODY: u32 = 65534;

/// Where things are in one run: HOME, `$MOAT_HOME`, the workspace, the agent socket.
struct Layout {
    // Owns the temporary directory everything lives in.
    _dir: tempfile::TempDir,
    home: PathBuf,
    moat_home: PathBuf,
    workspace: PathBuf,
    agent: PathBuf,
    _listener: std::os::unix::net::UnixListener,
}

/// `home`: the workspace is HOME, which holds `.moat`, the agent socket
/// and the credential files. `nested`: a workspace holding a non-default
/// `$MOAT_HOME` and the agent socket, HOME elsewhere.
fn layout(kind: &str, owner: Option<u32>) -> Layout {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = dir.path();
    let (home, moat_home, workspace, agent) = match kind {
        "home" => (
            d.join("home"),
            d.join("home/.moat"),
            d.join("home"),
            d.join("home/.agent.sock"),
        ),
        _ => (
            d.join("h"),
            d.join("x/state"),
            d.join("x"),
            d.join("x/agent/sock"),
        ),
    };
    for (rel, text) in [
        (".netrc", "machine x login y password netrc-secret\n"),
        (
            ".config/gh/hosts.yml",
            "github.com:\n  oauth_token: gho_secret\n",
        ),
        (".ssh/id_ed25519", "PRIVATE KEY\n"),
        (".ssh/known_hosts", "kh-visible\n"),
    ] {
        let p = home.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
    }
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::create_dir_all(agent.parent().unwrap()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    if let Some(uid) = owner {
        Command::new("chown")
            .args(["-R", &format!("{uid}:{uid}")])
            .arg(d)
            .status()
            .unwrap();
    }
    Layout {
        _dir: dir,
        home,
        moat_home,
        workspace,
        agent,
        _listener: listener,
    }
}

impl Layout {
    /// `moat ARGS` with this layout's environment, as root or (`as_nobody`) through setpriv.
    fn moat(&self, as_nobody: bool, args: &[&str]) -> Command {
        let mut c = if as_nobody {
            let mut c = setpriv_nobody();
            c.arg(MOAT);
            c
        } else {
            Command::new(MOAT)
        };
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", &self.home)
            .env("MOAT_HOME", &self.moat_home)
            .env("MOAT_KEY_BACKEND", "file")
            .env("SSH_AUTH_SOCK", &self.agent)
            .stdin(Stdio::null());
        c
    }

    fn grant(&self, as_nobody: bool) {
        let out = self
            .moat(as_nobody, &["grant", "github", "--no-validate"])
            .env("GITHUB_TOKEN", REAL)
            .output()
            .unwrap();
        ok(&out);
    }

    fn run(&self, as_nobody: bool, extra: &[&str], script: &str) -> Output {
        let ws = self.workspace.to_str().unwrap().to_owned();
        let mut args = vec!["run", &ws, "--grant", "github"];
        args.extend(extra);
        args.extend(["--", "/bin/sh", "-c", script]);
        self.moat(as_nobody, &args)
            .env("MH", &self.moat_home)
            .env("H", &self.home)
            .env("SOCK", &self.agent)
            .env("MOAT_BIN", MOAT)
            .output()
            .unwrap()
    }
}

/// Probes what of `$MOAT_HOME`, the agent and the credential files the
/// command can reach (variables: MH, H, SOCK, MOAT_BIN; `-e` passes them).
const EXPOSURE: &str = r#"
echo "list: $(ls -A "$MH" 2>/dev/null | wc -l)"
[ -e "$MH/encryption.key" ] && echo "key: visible" || echo "key: hidden"
touch "$MH/planted" 2>/dev/null && echo "write: ok" || echo "write: refused"
mkdir -p "$MH/providers" 2>/dev/null && echo 'name: evil' > "$MH/providers/evil.yaml" 2>/dev/null && echo "plant: ok" || echo "plant: refused"
for f in .netrc .config/gh/hosts.yml .ssh/id_ed25519; do
  [ -s "$H/$f" ] && echo "cred: $f readable"
  echo x 2>/dev/null >> "$H/$f" && echo "cred: $f written"
done
echo "known_hosts: $(cat "$H/.ssh/known_hosts" 2>/dev/null)"
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print("agent: connected")' "$SOCK" 2>/dev/null || echo "agent: refused"
echo "reveal: $(MOAT_HOME="$MH" MOAT_KEY_BACKEND=file "$MOAT_BIN" grant show github --reveal 2>&1 | head -c 300)"
"#;

fn env_args(l: &Layout) -> Vec<String> {
    [
        format!("MH={}", l.moat_home.display()),
        format!("H={}", l.home.display()),
        format!("SOCK={}", l.agent.display()),
        format!("MOAT_BIN={MOAT}"),
    ]
    .into_iter()
    .flat_map(|kv| ["-e".to_string(), kv])
    .collect()
}

fn assert_nothing_exposed(what: &str, l: &Layout, out: &Output) {
    let text = stdout(out);
    let err = stderr(out);
    assert!(out.status.success(), "{what}: {text}\n{err}");
    let line = |k: &str| line(&text, k);
    assert_eq!(line("list:"), "list: 0", "{what}: {text}\n{err}");
    assert_eq!(line("key:"), "key: hidden", "{what}: {text}");
    assert_eq!(line("write:"), "write: refused", "{what}: {text}");
    assert_eq!(line("plant:"), "plant: refused", "{what}: {text}");
    assert!(!text.contains("cred:"), "{what}: {text}");
    assert_eq!(line("agent:"), "agent: refused", "{what}: {text}");
    assert!(
        !text.contains(REAL) && !err.contains(REAL),
        "{what}: the real token reached the sandbox: {text}"
    );
    assert!(!l.moat_home.join("planted").exists(), "{what}");
    assert!(!l.moat_home.join("providers/evil.yaml").exists(), "{what}");
    assert_eq!(
        std::fs::read_to_string(l.home.join(".netrc")).unwrap(),
        "machine x login y password netrc-secret\n",
        "{what}"
    );
    if l.workspace == l.home {
        // Masked files only: the rest of the workspace stays as it is.
        assert_eq!(
            line("known_hosts:"),
            "known_hosts: kh-visible",
            "{what}: {text}"
        );
        assert!(err.contains("masked inside the workspace"), "{what}: {err}");
        assert!(err.contains(".moat (Moat's key"), "{what}: {err}");
        assert!(err.contains(".ssh/id_ed25519"), "{what}: {err}");
    }
}

#[test]
fn a_workspace_holding_moat_home_the_agent_and_credentials_shows_none_of_them() {
    assert!(is_root(), "vm-tests run as root");
    for kind in ["home", "nested"] {
        for redirect in ["nft", "ebpf"] {
            let l = layout(kind, None);
            l.grant(false);
            let mut extra: Vec<String> = vec!["--redirect".into(), redirect.into()];
            extra.extend(env_args(&l));
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            let out = l.run(false, &extra, EXPOSURE);
            assert_nothing_exposed(&format!("root {redirect}, {kind}"), &l, &out);
        }
        let l = layout(kind, Some(NOBODY));
        l.grant(true);
        let extra = env_args(&l);
        let mut args: Vec<&str> = vec!["--network-mode", "transparent"];
        args.extend(extra.iter().map(String::as_str));
        let out = l.run(true, &args, EXPOSURE);
        assert_nothing_exposed(&format!("rootless, {kind}"), &l, &out);
    }
}

/// What env mode's command could also try: Moat runs beside it, as the same
/// user, and the masks are plain mounts it might undo from a namespace of its own.
const ENV_ESCAPES: &str = r#"
cat /proc/$PPID/environ >/dev/null 2>&1 && echo "moat-memory: readable" || echo "moat-memory: refused"
undo='umount -l "$MH" 2>/dev/null; ls -A "$MH" | wc -l'
# Root without CAP_SETFCAP may not map uid 0 into a namespace: then unmapped.
echo "unmounted: $( (unshare -Urm sh -c "$undo" || unshare -Um sh -c "$undo") 2>/dev/null)"
"#;

#[test]
fn env_mode_masks_moat_home_the_agent_and_credentials_as_root_and_rootless() {
    assert!(is_root(), "vm-tests run as root");
    let script = format!("{EXPOSURE}{ENV_ESCAPES}");
    for kind in ["home", "nested"] {
        for as_nobody in [false, true] {
            let what = format!(
                "env mode, {kind}, as {}",
                ["root", "nobody"][as_nobody as usize]
            );
            let l = layout(kind, as_nobody.then_some(NOBODY));
            l.grant(as_nobody);
            let mut args: Vec<String> = vec!["--network-mode".into(), "env".into()];
            args.extend(env_args(&l));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = l.run(as_nobody, &args, &script);
            assert_nothing_exposed(&what, &l, &out);
            let text = stdout(&out);
            assert_eq!(
                line(&text, "moat-memory:"),
                "moat-memory: refused",
                "{what}"
            );
            assert_eq!(line(&text, "unmounted:"), "unmounted: 0", "{what}: {text}");
            assert!(stderr(&out).contains("egress is not enforced"), "{what}");
        }
    }
}

#[test]
fn env_mode_under_sudo_runs_the_caller_with_the_masks() {
    assert!(is_root(), "vm-tests run as root");
    let l = layout("nested", Some(NOBODY));
    l.grant(false);
    let mut args: Vec<String> = vec!["--network-mode".into(), "env".into()];
    args.extend(env_args(&l));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let ws = l.workspace.to_str().unwrap().to_owned();
    let mut run_args = vec!["run", ws.as_str(), "--grant", "github"];
    run_args.extend(args);
    let script = format!("{EXPOSURE}{ENV_ESCAPES}echo \"id: $(id -u):$(id -g)\"\n");
    run_args.extend(["--", "/bin/sh", "-c", &script]);
    // sudo as Debian runs it: HOME is root's, the caller in SUDO_*.
    let out = l
        .moat(false, &run_args)
        .env("HOME", "/root")
        .envs([
            ("SUDO_UID", "65534"),
            ("SUDO_GID", "65534"),
            ("SUDO_USER", "nobody"),
        ])
        .output()
        .unwrap();
    // (The layout's HOME is no user's home here: HOME is /root, the
    // caller's is /nonexistent; their credential files are masked by path.)
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for (key, want) in [
        ("list:", "list: 0"),
        ("key:", "key: hidden"),
        ("write:", "write: refused"),
        ("plant:", "plant: refused"),
        ("agent:", "agent: refused"),
    ] {
        assert_eq!(line(&text, key), want, "{text}");
    }
    assert!(!text.contains(REAL), "{text}");
    assert_eq!(line(&text, "id:"), "id: 65534:65534", "{text}");
    assert_eq!(
        line(&text, "moat-memory:"),
        "moat-memory: refused",
        "{text}"
    );
    assert_eq!(line(&text, "unmounted:"), "unmounted: 0", "{text}");
}

/// `CMD` run 33 user namespaces deep, as uid 65534 in each: there the
/// kernel refuses one more (its nesting limit), as a system without
/// unprivileged user namespaces would. Nothing of the host changes.
fn without_user_namespaces(dir: &Path, cmd: &Command) -> Command {
    let nest = dir.join("nest.sh");
    std::fs::write(
        &nest,
        "#!/bin/sh\nn=$1; shift\n[ \"$n\" -eq 0 ] && exec \"$@\"\n\
         exec unshare --user --map-user=65534 --map-group=65534 -- \"$0\" $((n-1)) \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&nest, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = Command::new(&nest);
    c.arg("33").arg("env").arg("-i");
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            let mut kv = k.to_owned();
            kv.push("=");
            kv.push(v);
            c.arg(kv);
        }
    }
    c.arg(cmd.get_program()).args(cmd.get_args());
    c.stdin(Stdio::null());
    c
}

#[test]
fn env_mode_without_user_namespaces_runs_only_with_insecure_env() {
    let l = layout("home", None);
    l.grant(false);
    let tools = tempfile::tempdir().unwrap();
    let ws = l.workspace.to_str().unwrap().to_owned();
    let attempt = |flags: &[&str]| {
        let mut args = vec!["run", ws.as_str()];
        args.extend(flags);
        args.extend([
            "--",
            "/bin/sh",
            "-c",
            "cat .ssh/id_ed25519; ls -A .moat | wc -l",
        ]);
        without_user_namespaces(tools.path(), &l.moat(false, &args))
            .output()
            .unwrap()
    };
    // Neither the default nor env mode starts a command that could read the key.
    for flags in [&[][..], &["--network-mode", "env"]] {
        let out = attempt(flags);
        let err = stderr(&out);
        assert!(!out.status.success(), "{flags:?}: {}", stdout(&out));
        assert!(err.contains("--insecure-env"), "{flags:?}: {err}");
        assert!(!stdout(&out).contains("PRIVATE KEY"), "{flags:?}");
    }
    let out = attempt(&["--insecure-env"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("nothing is masked") && err.contains("can read Moat's key"),
        "{err}"
    );
    assert!(err.contains("egress is not enforced"), "{err}");
    assert!(!err.contains("masked inside the workspace"), "{err}");
    assert!(stdout(&out).contains("PRIVATE KEY"), "{}", stdout(&out));
}

#[test]
fn a_workspace_that_is_or_lies_in_moat_home_is_refused() {
    let l = layout("nested", None);
    l.grant(false);
    let run_true = |ws: &Path| {
        let out = l
            .moat(
                false,
                &["run", ws.to_str().unwrap(), "--yes", "--", "/bin/true"],
            )
            .output()
            .unwrap();
        (out.status.success(), stderr(&out))
    };
    for ws in [l.moat_home.clone(), l.moat_home.join("runs")] {
        std::fs::create_dir_all(&ws).unwrap();
        let (success, err) = run_true(&ws);
        assert!(!success, "{err}");
        assert!(
            err.contains("$MOAT_HOME") && err.contains("outside"),
            "{err}"
        );
    }
    // moat.yaml unmask: lets a tool's file through, never Moat's own state.
    std::fs::write(l.workspace.join("moat.yaml"), "unmask: [\"~/.netrc\"]\n").unwrap();
    let (success, err) = run_true(&l.workspace);
    assert!(success && err.contains("unmasked by moat.yaml"), "{err}");
    let yaml = format!("unmask: [\"{}\"]\n", l.moat_home.display());
    std::fs::write(l.workspace.join("moat.yaml"), yaml).unwrap();
    let (success, err) = run_true(&l.workspace);
    assert!(!success && err.contains("cannot be unmasked"), "{err}");
}

/// A C probe from vm-tests/probes, built into `dir`.
fn probe(dir: &Path, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../vm-tests/probes/{name}.c"));
    std::fs::create_dir_all(dir).unwrap();
    let bin = dir.join(name);
    let out = Command::new("gcc")
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "gcc {name}: {}", stderr(&out));
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// The cgroup2 mount of this host (hybrid: /sys/fs/cgroup/unified).
fn cgroup2() -> String {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            post.starts_with("cgroup2 ")
                .then(|| pre.split(' ').nth(4).unwrap().to_owned())
        })
        .expect("a cgroup2 mount")
}

/// Probes of the host a uid-0 command used to reach (each prints one line).
const HOSTILE: &str = r#"
echo "uid_map: $(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
echo "capbnd: $(grep CapBnd /proc/self/status | cut -f2)"
echo "capeff: $(grep CapEff /proc/self/status | cut -f2)"
printf '|/bin/true %%P' > /proc/sys/kernel/core_pattern 2>/dev/null && echo "core_pattern: written" || echo "core_pattern: refused"
echo moat-pwned > /proc/sys/kernel/hostname 2>/dev/null && echo "hostname: written" || echo "hostname: refused"
touch /sys/moat-was-here 2>/dev/null && echo "sys: written" || echo "sys: refused"
echo 1 > /sys/fs/cgroup/unified/cgroup.procs 2>/dev/null && echo "cgroup.procs: written" || echo "cgroup.procs: refused"
touch /var/moat-was-here 2>/dev/null && echo "var: written" || echo "var: refused"
touch /var/tmp/ok 2>/dev/null && echo "var_tmp: written" || echo "var_tmp: refused"
head -c1 /etc/shadow >/dev/null 2>&1 && echo "shadow: read" || echo "shadow: refused"
[ -e /dev/kmsg ] && echo "kmsg: present" || echo "kmsg: absent"
[ -e /dev/vda ] || [ -e /dev/sda ] || [ -e /dev/mem ] && echo "disks: present" || echo "disks: absent"
echo "home: $(ls -A /home 2>/dev/null | wc -l)"
echo "run: $(ls -A /run 2>/dev/null | wc -l)"
python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print("run_socket: connected")' "$RUN_SOCK" 2>/dev/null || echo "run_socket: refused"
keyctl request user moat-containment-key >/dev/null 2>&1 && echo "keyring: found" || echo "keyring: fresh"
"$PROBES/handle" "$PWD"
"$PROBES/clone3" "$CG2"
echo "null: $(echo hi > /dev/null && echo ok)"
"#;

/// The host state the probes above aim at, to compare after the run.
fn host_snapshot() -> (String, String, bool, bool) {
    (
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        Path::new("/sys/moat-was-here").exists(),
        Path::new("/var/moat-was-here").exists(),
    )
}

fn assert_contained(what: &str, out: &Output, uid_map: &str) {
    let text = stdout(out);
    let line = |k: &str| line(&text, k);
    assert!(out.status.success(), "{what}: {text}\n{}", stderr(out));
    assert_eq!(
        line("uid_map:"),
        format!("uid_map: {uid_map}"),
        "{what}: {text}"
    );
    assert_eq!(
        line("capbnd:"),
        "capbnd: 0000000000000000",
        "{what}: {text}"
    );
    assert_eq!(
        line("capeff:"),
        "capeff: 0000000000000000",
        "{what}: {text}"
    );
    for (k, want) in [
        ("core_pattern:", "refused"),
        ("hostname:", "refused"),
        ("sys:", "refused"),
        ("cgroup.procs:", "refused"),
        ("var:", "refused"),
        ("var_tmp:", "written"),
        ("shadow:", "refused"),
        ("kmsg:", "absent"),
        ("disks:", "absent"),
        ("home:", "0"),
        ("run:", "0"),
        ("run_socket:", "refused"),
        ("keyring:", "fresh"),
        ("null:", "ok"),
    ] {
        assert_eq!(line(k), format!("{k} {want}"), "{what}: {text}");
    }
    assert!(
        line("handle:").starts_with("handle: refused"),
        "{what}: {text}"
    );
    assert!(
        line("clone3:").starts_with("clone3: refused"),
        "{what}: {text}"
    );
}

/// The probes need a host socket under /run and a home under /home to
/// aim at; both are removed on drop.
struct HostBait {
    run_sock: PathBuf,
    home: PathBuf,
    _listener: std::os::unix::net::UnixListener,
}

impl HostBait {
    fn new() -> Self {
        let id = std::process::id();
        let run_sock = PathBuf::from(format!("/run/moat-containment-{id}.sock"));
        let _ = std::fs::remove_file(&run_sock);
        let listener = std::os::unix::net::UnixListener::bind(&run_sock).unwrap();
        std::fs::set_permissions(&run_sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        let home = PathBuf::from(format!("/home/.moat-containment-{id}"));
        std::fs::create_dir_all(home.join(".config/gh")).unwrap();
        std::fs::write(home.join(".config/gh/hosts.yml"), "oauth_token: gho_x\n").unwrap();
        Self {
            run_sock,
            home,
            _listener: listener,
        }
    }
}

impl Drop for HostBait {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.run_sock);
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// `keyctl session - CMD`: the run starts in a session keyring holding a key.
fn in_keyring_session(cmd: &Command) -> Command {
    let mut k = Command::new("keyctl");
    k.args(["session", "-", "sh", "-c"])
        .arg("keyctl add user moat-containment-key s3cret @s >/dev/null && exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env_clear()
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdin(Stdio::null());
    k
}

#[test]
fn a_hostile_root_command_stays_contained() {
    assert!(is_root(), "vm-tests run as root");
    let bait = HostBait::new();
    let before = host_snapshot();
    let l = layout("nested", None);
    l.grant(false);
    // In the workspace: the rest of the test's temp dir is under the
    // sandbox's fresh /tmp.
    let probes = l.workspace.join("probes");
    probe(&probes, "handle");
    probe(&probes, "clone3");
    for redirect in ["nft", "ebpf"] {
        let ws = l.workspace.to_str().unwrap().to_owned();
        let mut cmd = l.moat(false, &[]);
        cmd.args(["run", &ws, "--redirect", redirect])
            .args(["-e", &format!("PROBES={}", probes.display())])
            .args(["-e", &format!("RUN_SOCK={}", bait.run_sock.display())])
            .args(["-e", &format!("CG2={}", cgroup2())])
            .args(["--", "/bin/sh", "-c", HOSTILE]);
        let out = in_keyring_session(&cmd).output().unwrap();
        assert_contained(&format!("root {redirect}"), &out, "0 2147352576 65536");
        // What the command wrote as its root is the host root's in the
        // workspace (id-mapped), nobody's nowhere else.
        let out = l
            .moat(
                false,
                &[
                    "run",
                    &ws,
                    "--redirect",
                    redirect,
                    "--",
                    "/bin/sh",
                    "-c",
                    "touch made-inside; id -u",
                ],
            )
            .output()
            .unwrap();
        assert_eq!(stdout(&out).trim(), "0", "{}", stderr(&out));
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(l.workspace.join("made-inside"))
                .unwrap()
                .uid(),
            0
        );
    }
    assert_eq!(host_snapshot(), before, "the host's state changed");
    // The test's key really was in the session the run started from.
    let out = in_keyring_session(Command::new("keyctl").args([
        "request",
        "user",
        "moat-containment-key",
    ]))
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn under_sudo_the_command_is_the_caller_and_their_home_is_hidden() {
    assert!(is_root(), "vm-tests run as root");
    let bait = HostBait::new();
    let before = host_snapshot();
    let l = layout("nested", Some(NOBODY));
    l.grant(false);
    // In the workspace: the rest of the test's temp dir is under the
    // sandbox's fresh /tmp.
    let probes = l.workspace.join("probes");
    probe(&probes, "handle");
    probe(&probes, "clone3");
    let ws = l.workspace.to_str().unwrap().to_owned();
    let mut cmd = l.moat(false, &[]);
    // sudo as Debian runs it: HOME is root's, the caller in SUDO_*.
    cmd.env("HOME", "/root")
        .envs([("SUDO_UID", "65534"), ("SUDO_GID", "65534"), ("SUDO_USER", "nobody")])
        .args(["run", &ws, "--redirect", "ebpf"])
        .args(["-e", &format!("PROBES={}", probes.display())])
        .args(["-e", &format!("RUN_SOCK={}", bait.run_sock.display())])
        .args(["-e", &format!("CG2={}", cgroup2())])
        .args(["-e", &format!("BAIT={}", bait.home.display())])
        .args(["--", "/bin/sh", "-c"])
        .arg(format!(
            "{HOSTILE}\necho \"id: $(id -u):$(id -g)\"\ncat \"$BAIT/.config/gh/hosts.yml\" 2>/dev/null && echo 'bait: read' || echo 'bait: hidden'\ntouch /root/.bashrc 2>/dev/null && echo 'root_home: written' || echo 'root_home: refused'"
        ));
    let out = in_keyring_session(&cmd).output().unwrap();
    let text = stdout(&out);
    assert_contained("sudo", &out, "0 0 4294967295");
    assert_eq!(line(&text, "id:"), "id: 65534:65534", "{text}");
    assert_eq!(line(&text, "bait:"), "bait: hidden", "{text}");
    assert_eq!(line(&text, "root_home:"), "root_home: refused", "{text}");
    assert_eq!(host_snapshot(), before, "the host's state changed");
}

/// The widened moat.yaml a hostile command leaves behind for the next run.
const WIDENED: &str =
    "grants: [github]\nsecrets:\n  STOLEN: env://INVOKER_SECRET\nnetwork:\n  host: [7777]\n";

#[test]
fn a_moat_yaml_rewritten_inside_a_run_does_not_widen_the_next_one() {
    assert!(is_root(), "vm-tests run as root");
    for as_nobody in [false, true] {
        let who = ["root", "rootless"][as_nobody as usize];
        let l = layout("home", as_nobody.then_some(NOBODY));
        l.grant(as_nobody);
        let yaml = l.workspace.join("moat.yaml");
        std::fs::write(&yaml, "grants: [github]\n").unwrap();
        if as_nobody {
            std::os::unix::fs::chown(&yaml, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        let trusted = l.home.join(".config/moat/trusted");
        let run = |extra: &[&str], script: &str| {
            let ws = l.workspace.to_str().unwrap().to_owned();
            let (t, widened) = (
                format!("T={}", trusted.display()),
                format!("WIDENED={WIDENED}"),
            );
            let mut args = vec!["run", ws.as_str(), "-e", &t, "-e", &widened];
            args.extend(extra);
            args.extend(["--", "/bin/sh", "-c", script]);
            let mut c = l.moat(as_nobody, &args);
            c.env("INVOKER_SECRET", "invoker-hunter2");
            c
        };
        // First sight: a grant is new access, so it needs a yes.
        let out = run(&[], "true").output().unwrap();
        assert!(!out.status.success(), "{who}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("+ grant github"),
            "{who}: {}",
            stderr(&out)
        );
        // Accepted; inside, the command rewrites moat.yaml and tries to
        // accept its own version.
        let hostile = r#"printf '%s' "$WIDENED" > moat.yaml && echo "yaml: written"
ls -A "$T" 2>/dev/null | wc -l | sed 's/^/records: /'
for f in "$T"/*; do echo '{}' > "$f" 2>/dev/null && echo "record: forged"; done
touch "$T/forged.json" 2>/dev/null && echo "record: planted" || echo "record: refused""#;
        let out = run(&["--network-mode", "transparent", "--yes"], hostile)
            .output()
            .unwrap();
        let text = stdout(&out);
        assert!(out.status.success(), "{who}: {}", stderr(&out));
        assert_eq!(line(&text, "yaml:"), "yaml: written", "{who}");
        assert_eq!(line(&text, "records:"), "records: 0", "{who}: {text}");
        assert_eq!(line(&text, "record:"), "record: refused", "{who}: {text}");
        assert_eq!(std::fs::read_dir(&trusted).unwrap().count(), 1, "{who}");
        // The next plain run shows what was added and runs nothing.
        let probe = "echo \"stolen: ${STOLEN:-none}\"";
        let out = run(&[], probe).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "{who}: {err}");
        assert!(
            err.contains("+ secret STOLEN from env://INVOKER_SECRET")
                && err.contains("+ host port 7777")
                && err.contains("--yes"),
            "{who}: {err}"
        );
        assert!(!err.contains("+ grant github"), "accepted before: {err}");
        assert!(!stdout(&out).contains("hunter2"), "{who}");
        // At a terminal it asks; "n" runs nothing.
        let mut c = run(&[], probe);
        let line_of = |c: &Command| {
            std::iter::once(c.get_program())
                .chain(c.get_args())
                .map(|a| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let script_line = line_of(&c);
        let mut tty = Command::new("script");
        tty.args(["-qec", &script_line, "/dev/null"])
            .envs(c.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("SHELL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c = tty;
        let mut child = c.spawn().unwrap();
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(b"n\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let shown = stdout(&out);
        assert!(
            shown.contains("Run with this access? [y/N]"),
            "{who}: {shown}"
        );
        assert!(
            shown.contains("not accepted") && !shown.contains("hunter2"),
            "{who}: {shown}"
        );
        // The user accepts it; then it runs as is, with no question.
        let out = run(&["--yes"], probe).output().unwrap();
        assert_eq!(
            line(&stdout(&out), "stolen:"),
            "stolen: invoker-hunter2",
            "{who}"
        );
        assert!(stderr(&out).contains("accepted with --yes"), "{who}");
        let out = run(&[], probe).output().unwrap();
        assert!(out.status.success(), "{who}: {}", stderr(&out));
        // Narrowing never asks.
        std::fs::write(&yaml, "grants: [github]\n").unwrap();
        let out = run(&[], probe).output().unwrap();
        assert_eq!(
            line(&stdout(&out), "stolen:"),
            "stolen: none",
            "{who}: {}",
            stderr(&out)
        );
    }
}
