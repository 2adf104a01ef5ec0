//! Real `/proc/PID/cgroup` texts, one per runtime and cgroup layout.

use super::*;

const ID: &str = "342a6fb4e6124d84dd97f8e7408b8e0e7e2f062a91e377b8bf439c864b1a940b";

/// `(runtime, layout, text, expected runtime)`; `{ID}` stands for the container id.
const SAMPLES: &[(&str, &str, Option<Runtime>)] = &[
    // podman 4.3 with runc, cgroupfs manager, hybrid host (this machine, recorded live).
    (
        "9:name=systemd:/libpod_parent/libpod-{ID}\n8:pids:/libpod_parent/libpod-{ID}\n\
         4:memory:/libpod_parent/libpod-{ID}\n1:cpu:/libpod_parent/libpod-{ID}\n\
         0::/libpod_parent/libpod-{ID}\n",
        "podman cgroupfs hybrid",
        Some(Runtime::Podman),
    ),
    // podman with systemd on cgroup v2, the payload nested under `container`.
    (
        "0::/machine.slice/libpod-{ID}.scope/container\n",
        "podman systemd v2",
        Some(Runtime::Podman),
    ),
    // podman under cgroupfs on cgroup v2.
    (
        "0::/libpod_parent/libpod-{ID}\n",
        "podman cgroupfs v2",
        Some(Runtime::Podman),
    ),
    // Docker with the systemd driver on cgroup v2.
    (
        "0::/system.slice/docker-{ID}.scope\n",
        "docker systemd v2",
        Some(Runtime::Docker),
    ),
    // Docker with the cgroupfs driver on cgroup v1.
    (
        "12:hugetlb:/docker/{ID}\n11:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n",
        "docker cgroupfs v1",
        Some(Runtime::Docker),
    ),
    // Docker with cgroupfs on a hybrid host: the v2 line stays at the root.
    (
        "5:devices:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/\n",
        "docker cgroupfs hybrid",
        Some(Runtime::Docker),
    ),
    // containerd's CRI plugin under Kubernetes, systemd driver, cgroup v2.
    (
        "0::/kubepods.slice/kubepods-burstable.slice/\
         kubepods-burstable-pod5d2d8e4c_4f3a_4c8e_9f2b_1a2b3c4d5e6f.slice/cri-containerd-{ID}.scope\n",
        "containerd kubepods systemd v2",
        Some(Runtime::Containerd),
    ),
    // containerd (`ctr -n k8s.io run`), cgroupfs.
    (
        "0::/k8s.io/{ID}\n",
        "containerd k8s.io namespace",
        Some(Runtime::Containerd),
    ),
    // nerdctl with systemd.
    (
        "0::/system.slice/nerdctl-{ID}.scope\n",
        "nerdctl systemd v2",
        Some(Runtime::Containerd),
    ),
    // CRI-O under Kubernetes, systemd driver, cgroup v2.
    (
        "0::/kubepods.slice/kubepods-besteffort.slice/\
         kubepods-besteffort-pod0e1c9f55_7b2d_4d8c_a6c1_8d7f1e2a3b4c.slice/crio-{ID}.scope\n",
        "cri-o kubepods systemd v2",
        Some(Runtime::CriO),
    ),
    // Kubernetes with the cgroupfs driver, cgroup v1: the path does not name the runtime.
    (
        "11:memory:/kubepods/besteffort/pod0e1c9f55-7b2d-4d8c-a6c1-8d7f1e2a3b4c/{ID}\n\
         1:name=systemd:/kubepods/besteffort/pod0e1c9f55-7b2d-4d8c-a6c1-8d7f1e2a3b4c/{ID}\n",
        "kubepods cgroupfs v1",
        Some(Runtime::Kubernetes),
    ),
    // runc run with a 64-hex id (how containerd drives runc), cgroupfs: no runtime mark.
    (
        "9:name=systemd:/{ID}\n4:memory:/{ID}\n0::/{ID}\n",
        "runc cgroupfs hybrid",
        None,
    ),
];

#[test]
fn every_layout_names_the_container() {
    for (text, layout, runtime) in SAMPLES {
        let text = text.replace("{ID}", ID);
        let found = parse_cgroup(&text).unwrap_or_else(|| panic!("{layout}: no container"));
        assert_eq!(found.id, ID, "{layout}");
        assert_eq!(found.runtime, *runtime, "{layout}");
        assert!(found.cgroup.contains(ID), "{layout}: {}", found.cgroup);
    }
}

#[test]
fn host_processes_and_runtime_monitors_are_not_in_a_container() {
    let outside = [
        // A login session on cgroup v2.
        "0::/user.slice/user-1000.slice/session-2.scope\n",
        // This machine's own sandbox: a 32-hex id is not a container id.
        "9:name=systemd:/\n4:memory:/process_api/2c9cf99f14474a07bcb8c60e46348646\n0::/\n",
        // podman's conmon under cgroupfs and under systemd; CRI-O's conmon.
        "8:pids:/libpod_parent/conmon\n0::/\n",
        "0::/machine.slice/libpod-conmon-{ID}.scope\n",
        "0::/kubepods.slice/kubepods-besteffort.slice/crio-conmon-{ID}.scope\n",
        // A plain runc container named by a word: only `runc list` knows it.
        "9:name=systemd:/exploreabcd\n0::/exploreabcd\n",
        "",
    ];
    for text in outside {
        let text = text.replace("{ID}", ID);
        assert_eq!(parse_cgroup(&text), None, "{text}");
    }
}

#[test]
fn ns_pid_is_the_innermost_pid() {
    assert_eq!(
        ns_pid_from_status("Name:\tmaps\nNSpid:\t4748\t1\n"),
        Some(1)
    );
    assert_eq!(ns_pid_from_status("NSpid:\t9\t7\t1\n"), Some(1));
    assert_eq!(ns_pid_from_status("NSpid:\t4748\n"), None);
    assert_eq!(ns_pid_from_status("Name:\tmaps\n"), None);
    assert_eq!(ns_pid(std::process::id()), None);
}

#[test]
fn labels_name_the_container_and_shorten_its_id() {
    let mut info = ContainerInfo {
        id: ID.to_string(),
        name: Some("leakzoo".into()),
        runtime: Some("podman".into()),
        cgroup: "/libpod_parent/libpod-x".into(),
    };
    assert_eq!(info.label(), "leakzoo (342a6fb4e612)");
    info.name = None;
    assert_eq!(info.label(), "342a6fb4e612");
    info.id = "leakzoo-runc".into();
    info.name = Some("leakzoo-runc".into());
    assert_eq!(info.label(), "leakzoo-runc");
}
