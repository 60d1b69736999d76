//! Full pod lifecycles through `netready serve` against a real containerd, compared with the
//! same lifecycle sent to containerd directly.

use std::path::Path;

use k8s_cri::v1 as cri;
use netready_testkit::pod::{self, PodSpec};
use netready_testkit::{cri as client, netready::Netready, Containerd};

const BIN: &str = env!("CARGO_BIN_EXE_netready");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_through_netready_matches_containerd() {
    let ctd = Containerd::start().await.unwrap();
    let nr = Netready::start(Path::new(BIN), &ctd.scratch("netready"), &ctd.socket(), &[])
        .await
        .unwrap();
    let logs = ctd.scratch("pods");

    let (mut rt, mut img) = client::connect(&ctd.socket()).await.unwrap();
    let spec = PodSpec::new("direct", &logs, ctd.cgroup_parent());
    let (direct, _) = pod::lifecycle(&mut rt, &mut img, &spec)
        .await
        .unwrap_or_else(|e| panic!("direct lifecycle: {e:#}\n{}", ctd.log_tail()));

    let (mut rt, mut img) = client::connect(nr.socket()).await.unwrap();
    let spec = PodSpec::new("via-netready", &logs, ctd.cgroup_parent());
    let (via, _) = pod::lifecycle(&mut rt, &mut img, &spec)
        .await
        .unwrap_or_else(|e| panic!("lifecycle via netready: {e:#}\n{}", nr.log()));

    assert_eq!(via, direct, "netready must not change what kubelet sees");
    // And what both saw is a real, complete pod life.
    assert_eq!(via.sandbox_state, cri::PodSandboxState::SandboxReady as i32);
    assert!(via.has_ip, "PodSandboxStatus carries the bridge IP");
    assert!(via.image_id_is_digest);
    assert_eq!(
        via.running_state,
        cri::ContainerState::ContainerRunning as i32
    );
    assert_eq!(via.exec, (0, "exec-ok\n".to_string()));
    assert_eq!(
        via.exited,
        (
            cri::ContainerState::ContainerExited as i32,
            0,
            "Completed".to_string()
        )
    );
    assert_eq!(via.log, ["stdout F hello", "stdout F bye"]);
    assert_eq!(
        via.stopped_state,
        cri::PodSandboxState::SandboxNotready as i32
    );
    assert!(via.removed);
}
