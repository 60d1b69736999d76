//! Needs root: creates real namespaces in a private temporary directory.

use super::*;

fn ns_id(path: &str) -> String {
    std::fs::read_link(path)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn create_run_remove() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Netns::create(dir.path(), "nrtest-a").unwrap();
    assert_eq!(ns.name(), "nrtest-a");
    let outside = ns_id("/proc/thread-self/ns/net");
    let inside = ns.run(|| ns_id("/proc/thread-self/ns/net")).unwrap();
    assert_ne!(outside, inside, "closure must run in the new namespace");
    // The calling thread stays where it was.
    assert_eq!(outside, ns_id("/proc/thread-self/ns/net"));
    // A second entry sees the same namespace: the bind mount keeps it alive.
    assert_eq!(
        inside,
        ns.run(|| ns_id("/proc/thread-self/ns/net")).unwrap()
    );
    let path = ns.path().to_owned();
    ns.remove().unwrap();
    assert!(!path.exists());
    // Removing again is success.
    remove_path(&path).unwrap();
}

#[test]
fn drop_removes_until_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = Netns::create(dir.path(), "dropped")
        .unwrap()
        .path()
        .to_owned();
    assert!(!path.exists());
    let kept = Netns::create(dir.path(), "kept").unwrap().keep();
    assert!(kept.exists());
    let reopened = Netns::open(&kept).unwrap();
    assert!(reopened.run(|| ()).is_ok());
    drop(reopened);
    assert!(kept.exists(), "an opened netns is not removed on drop");
    remove_path(&kept).unwrap();
    assert!(!kept.exists());
}

#[test]
fn create_twice_fails_and_keeps_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = Netns::create(dir.path(), "dup").unwrap();
    let err = Netns::create(dir.path(), "dup").unwrap_err();
    assert!(err.to_string().contains("create mount point"), "{err}");
    assert!(first.run(|| ()).is_ok());
}

#[test]
fn pool_enters_and_returns_home() {
    let dir = tempfile::tempdir().unwrap();
    let a = Netns::create(dir.path(), "pool-a").unwrap();
    let b = Netns::create(dir.path(), "pool-b").unwrap();
    let in_a = a.run(|| ns_id("/proc/thread-self/ns/net")).unwrap();
    let in_b = b.run(|| ns_id("/proc/thread-self/ns/net")).unwrap();
    let pool = EnterPool::new(1);
    let home = pool
        .run(Path::new("/proc/self/ns/net"), || {
            ns_id("/proc/thread-self/ns/net")
        })
        .recv()
        .unwrap()
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            pool.run(a.path(), || ns_id("/proc/thread-self/ns/net"))
                .recv()
                .unwrap()
                .unwrap(),
            in_a
        );
        assert_eq!(
            pool.run(b.path(), || ns_id("/proc/thread-self/ns/net"))
                .recv()
                .unwrap()
                .unwrap(),
            in_b
        );
    }
    // Between jobs the thread is back home: a removed namespace is not held.
    let path = a.path().to_owned();
    a.remove().unwrap();
    assert!(
        pool.run(&path, || ()).recv().unwrap().is_err(),
        "gone is an error, not a hang"
    );
    assert_eq!(ns_id("/proc/self/ns/net"), home);
}

/// What iproute2 sees in the namespace: `ip -o link` and `ip -o addr` of `lo`.
fn ip_lo(ns: &Netns) -> (String, String) {
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", ns.path().display()))
            .arg("ip")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    (
        ip(&["-o", "link", "show", "lo"]),
        ip(&["-o", "addr", "show", "lo"]),
    )
}

#[test]
fn lo_comes_up_over_netlink_as_the_loopback_plugin_leaves_it() {
    let dir = tempfile::tempdir().unwrap();
    let down = Netns::create(dir.path(), "lo-down").unwrap();
    let (link, addr) = ip_lo(&down);
    assert!(link.contains("state DOWN"), "{link}");
    assert!(!addr.contains("127.0.0.1"), "{addr}");
    let up = Netns::create_with(dir.path(), "lo-up", true).unwrap();
    let (link, addr) = ip_lo(&up);
    assert!(link.contains("<LOOPBACK,UP,LOWER_UP>"), "{link}");
    assert!(addr.contains("inet 127.0.0.1/8"), "{addr}");
    // And it carries traffic: a datagram to itself over 127.0.0.1.
    let echoed = up
        .run(|| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.send_to(b"x", s.local_addr()?)?;
            let mut b = [0u8; 1];
            s.recv(&mut b)
        })
        .unwrap();
    assert_eq!(echoed.unwrap(), 1);
}
