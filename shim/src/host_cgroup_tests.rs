use super::*;

const HYBRID: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,xattr,name=systemd
33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
34 30 0:30 / /sys/fs/cgroup/cpuset rw,nosuid shared:13 - cgroup cgroup rw,cpuset,clone_children
35 30 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:14 - cgroup cgroup rw,memory
40 25 0:40 / /proc rw - proc proc rw
";

#[test]
fn hierarchies_of_a_hybrid_host() {
    let h = parse_mountinfo(HYBRID);
    let keys: Vec<(&str, &str)> = h
        .iter()
        .map(|h| (h.mount.to_str().unwrap_or_default(), h.key.as_str()))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("/sys/fs/cgroup/unified", ""),
            ("/sys/fs/cgroup/systemd", "name=systemd"),
            ("/sys/fs/cgroup/cpu,cpuacct", "cpu,cpuacct"),
            ("/sys/fs/cgroup/cpuset", "cpuset"),
            ("/sys/fs/cgroup/memory", "memory"),
        ]
    );
}

#[test]
fn hierarchy_of_a_v2_host() {
    let h = parse_mountinfo("29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n");
    assert_eq!(
        h,
        vec![Hierarchy {
            mount: "/sys/fs/cgroup".into(),
            key: String::new()
        }]
    );
}

#[test]
fn proc_cgroup_lines() {
    let own = parse_proc_cgroup("12:cpu,cpuacct:/a/b\n1:name=systemd:/init.scope\n0::/c\n");
    assert_eq!(
        own,
        vec![
            ("cpu,cpuacct".to_owned(), PathBuf::from("/a/b")),
            ("name=systemd".to_owned(), PathBuf::from("/init.scope")),
            (String::new(), PathBuf::from("/c")),
        ]
    );
}

#[test]
fn cgroupfs_paths() {
    assert_eq!(
        resolve("/kubepods/burstable/pod12/abc").ok(),
        Some(PathBuf::from("kubepods/burstable/pod12/abc"))
    );
    assert_eq!(resolve("default/x").ok(), Some(PathBuf::from("default/x")));
}

#[test]
fn systemd_paths_name_the_scope_under_the_slice_hierarchy() {
    assert_eq!(
        resolve("kubepods-besteffort-pod12.slice:cri-containerd:abc").ok(),
        Some(PathBuf::from(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"
        ))
    );
    assert_eq!(
        resolve("system.slice:docker:abc").ok(),
        Some(PathBuf::from("system.slice/docker-abc.scope"))
    );
    assert_eq!(resolve(":x:abc").ok(), Some(PathBuf::from("x-abc.scope")));
}

#[test]
fn paths_that_leave_the_hierarchy_or_name_nothing_are_refused() {
    for bad in [
        "",
        "/",
        "/a/../../etc",
        "bad-.slice:p:n",
        "a--b.slice:p:n",
        "notaslice:p:n",
        "a.slice:p:",
        "../x.slice:p:n",
    ] {
        assert!(
            matches!(resolve(bad), Err(CgroupError::InvalidPath(_))),
            "{bad:?} accepted: {:?}",
            resolve(bad)
        );
    }
}

#[test]
fn overhead_cgroup_when_not_sandbox_only() {
    assert_eq!(
        target(false, Some("/kubepods/pod1/sb"), "sb")
            .ok()
            .flatten(),
        Some(PathBuf::from("kata_overhead/sb"))
    );
    assert_eq!(
        target(true, Some("/kubepods/pod1/sb"), "sb").ok().flatten(),
        Some(PathBuf::from("kubepods/pod1/sb"))
    );
    assert_eq!(target(true, None, "sb").ok().flatten(), None);
    assert!(target(false, None, "../x").is_err());
}

/// On plain directories standing in for cgroupfs: what enter creates and
/// writes, what leave undoes.
#[test]
fn enter_creates_records_and_leave_removes() {
    let root = tempfile::tempdir().expect("tempdir");
    let v2 = root.path().join("unified");
    let cpuset = root.path().join("cpuset");
    fs::create_dir_all(v2.join("old")).expect("mkdir");
    fs::create_dir_all(&cpuset).expect("mkdir");
    fs::write(cpuset.join("cpuset.cpus"), "0-1\n").expect("write");
    fs::write(cpuset.join("cpuset.mems"), "0\n").expect("write");
    fs::create_dir_all(cpuset.join("pods")).expect("mkdir");
    fs::write(cpuset.join("pods/cpuset.cpus"), "0-1\n").expect("write");
    fs::write(cpuset.join("pods/cpuset.mems"), "0\n").expect("write");
    let hierarchies = vec![
        Hierarchy {
            mount: v2.clone(),
            key: String::new(),
        },
        Hierarchy {
            mount: cpuset.clone(),
            key: "cpuset".into(),
        },
    ];
    let own = vec![(String::new(), PathBuf::from("/old"))];
    let p = enter(&hierarchies, &own, Path::new("pods/pod1/sb")).expect("enter");
    let pid = std::process::id().to_string();
    assert_eq!(
        fs::read_to_string(v2.join("pods/pod1/sb/cgroup.procs")).ok(),
        Some(pid.clone())
    );
    // The existing parent is not recorded: it is not ours to remove.
    assert_eq!(
        p.created,
        vec![
            v2.join("pods"),
            v2.join("pods/pod1"),
            v2.join("pods/pod1/sb"),
            cpuset.join("pods/pod1"),
            cpuset.join("pods/pod1/sb"),
        ]
    );
    assert_eq!(
        fs::read_to_string(cpuset.join("pods/pod1/sb/cpuset.cpus")).ok(),
        Some("0-1".into())
    );
    // Stand-in directories hold files a real cgroup's do not.
    for d in &p.created {
        for f in ["cgroup.procs", "cpuset.cpus", "cpuset.mems"] {
            let _ = fs::remove_file(d.join(f));
        }
    }
    p.leave();
    assert_eq!(
        fs::read_to_string(v2.join("old/cgroup.procs")).ok(),
        Some(pid)
    );
    assert!(!v2.join("pods").exists());
    assert!(!cpuset.join("pods/pod1").exists());
    assert!(cpuset.join("pods").exists());
}

#[test]
fn a_failed_enter_leaves_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let cpuset = root.path().join("cpuset");
    // No cpuset.cpus in the parent: the new cgroup cannot be given CPUs.
    fs::create_dir_all(&cpuset).expect("mkdir");
    let hierarchies = vec![Hierarchy {
        mount: cpuset.clone(),
        key: "cpuset".into(),
    }];
    let err = enter(&hierarchies, &[], Path::new("a/b")).expect_err("no cpus to inherit");
    assert!(err.to_string().contains("cpuset.cpus"), "{err}");
    assert!(!cpuset.join("a").exists());
}
