//! The report: a ratio table (printed and at the top of `report.md`), the
//! detailed Markdown, `report.json`, and `scaling.svg` (drawn by hand).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use super::procmem::Mem;
use super::Results;

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

/// One row of the ratio table: what, ours, reference, ratio, target, verdict.
pub struct Row {
    pub what: String,
    pub ours: String,
    pub reference: String,
    pub ratio: f64,
    pub target: String,
    pub met: Option<bool>,
}

pub fn rows(r: &Results) -> Vec<Row> {
    let mut rows = vec![];
    if r.start_kata.n() > 0 {
        let refm = r.start_runc.median() + r.start_floor.median();
        let q = ratio(r.start_kata.median(), refm);
        rows.push(Row {
            what: "pod start / (runc start + VM floor)".into(),
            ours: format!("{:.0} ms", r.start_kata.median()),
            reference: format!(
                "{:.0} + {:.0} ms",
                r.start_runc.median(),
                r.start_floor.median()
            ),
            ratio: q,
            target: "≤ 1.10".into(),
            met: Some(q <= 1.10),
        });
    }
    if r.exec_kata.n() > 0 {
        rows.push(Row {
            what: "exec latency / runc".into(),
            ours: format!("{:.0} ms", r.exec_kata.median()),
            reference: format!("{:.0} ms", r.exec_runc.median()),
            ratio: ratio(r.exec_kata.median(), r.exec_runc.median()),
            target: "report".into(),
            met: None,
        });
    }
    for s in &r.shim_mem {
        let q = ratio(s.kata.pss_kib as f64, s.runc.pss_kib as f64);
        rows.push(Row {
            what: format!("shim PSS / runc shim, {} container(s)", s.containers),
            ours: format!("{:.1} MiB", mib(s.kata.pss_kib)),
            reference: format!("{:.1} MiB", mib(s.runc.pss_kib)),
            ratio: q,
            target: "≤ 0.33".into(),
            met: Some(q <= 1.0 / 3.0),
        });
    }
    if !r.pod_mem.is_empty() {
        let total = r.pod_mem.values().fold(Mem::default(), |a, b| a + *b);
        let q = ratio(mib(total.pss_kib), 96.0);
        rows.push(Row {
            what: "per-pod host PSS / 96 MiB budget".into(),
            ours: format!("{:.1} MiB", mib(total.pss_kib)),
            reference: "96 MiB".into(),
            ratio: q,
            target: "≤ 1.00".into(),
            met: Some(q <= 1.0),
        });
    }
    if r.tput_kata.n() > 0 {
        let q = ratio(r.tput_kata.median(), r.tput_floor.median());
        rows.push(Row {
            what: "stdout throughput / raw vsock floor".into(),
            ours: format!("{:.0} MiB/s", r.tput_kata.median()),
            reference: format!("{:.0} MiB/s", r.tput_floor.median()),
            ratio: q,
            target: "≥ 0.80".into(),
            met: Some(q >= 0.8),
        });
        rows.push(Row {
            what: "stdout throughput / runc".into(),
            ours: format!("{:.0} MiB/s", r.tput_kata.median()),
            reference: format!("{:.0} MiB/s", r.tput_runc.median()),
            ratio: ratio(r.tput_kata.median(), r.tput_runc.median()),
            target: "report".into(),
            met: None,
        });
    }
    if let (Some(one), Some(last)) = (r.scaling.first(), r.scaling.last()) {
        if last.pods > one.pods {
            rows.push(Row {
                what: format!("start of {} pods at once / 1 pod", last.pods),
                ours: format!("{:.0} ms", last.time_ms.median()),
                reference: format!("{:.0} ms", one.time_ms.median()),
                ratio: ratio(last.time_ms.median(), one.time_ms.median()),
                target: "report".into(),
                met: None,
            });
        }
    }
    rows
}

/// Where a target is missed: what costs what (from the figures of this run)
/// and the next idea.
pub fn findings(r: &Results) -> Vec<String> {
    let mut out = vec![];
    let floor = r.start_floor.median();
    if r.start_kata.n() > 0 {
        let over = r.start_kata.median() - r.start_runc.median() - floor;
        let vm = ["vm_launch", "agent_connect"]
            .iter()
            .filter_map(|p| r.phases.get(*p).map(|s| s.median()))
            .sum::<f64>();
        let rpcs = ["create_sandbox", "create_container", "start_container"]
            .iter()
            .filter_map(|p| r.phases.get(*p).map(|s| s.median()))
            .sum::<f64>();
        if over > 0.1 * (r.start_runc.median() + floor) {
            out.push(format!(
                "pod start is {over:.0} ms over runc + floor. VM launch to agent answering \
                 (vm_launch + agent_connect) takes {vm:.0} ms against the floor's {floor:.0} ms \
                 ({:+.0} ms: the helpers and QMP start, four more devices to probe \
                 (virtio-fs, balloon, rng, pvpanic: ~40 ms), the agent's own start ~50 ms \
                 and its first health check); the agent RPCs (CreateSandbox, \
                 CreateContainer, StartContainer) take {rpcs:.0} ms. Done: the vsock opens \
                 to the shim on the agent's `agent ready` console line (it waited for \
                 `vhost-started` + a 200 ms settle: ~50 ms later), the guest CPU without \
                 ERMS (TCG ran the kernel's `rep movsb`/`stosb` a byte per turn: boot \
                 -47 ms, CreateContainer faster), the project's guest kernel (all \
                 built in: no module loading; the floor boots it too), the guest boots \
                 `quiet`, the container helper starts by posix_spawn from a non-PIE agent \
                 (it reuses TCG's translations of the agent's code: spawn 50 -> 6 ms, exec \
                 to main 61 -> 11 ms). Create in the guest (~120 ms) is now many small \
                 parts: spec checks and cgroup creation 28 ms (rootfs lookups over \
                 virtio-fs), the blocking-thread hand-off 14, spawn 13, helper start 23, \
                 namespaces 5, fork into the cgroup 7, rootfs set-up 20. Tried: a \
                 container helper spawned ahead of need (slower under load); the boot \
                 settle at 25 ms (1 of 39 boots lost the vsock at load 11); `tb-size=16` \
                 (start +130 ms). Next: virtio-fs `--cache always` for image rootfs through \
                 a second virtiofsd (volumes stay `auto`), the cgroup and spec checks \
                 overlapped with the helper's start, the shared virtio-fs mounted while the \
                 agent starts (the mount is ~40 ms of CreateSandbox).",
                vm - floor
            ));
        }
    }
    if !r.pod_mem.is_empty() {
        let total = r.pod_mem.values().fold(Mem::default(), |a, b| a + *b);
        if mib(total.pss_kib) > 96.0 {
            let q = &r.qemu;
            out.push(format!(
                "per-pod PSS is {:.0} MiB (budget 96): guest RAM touched {:.0} MiB, TCG \
                 translation cache {:.0} MiB, QEMU's private mapping of the PVH vmlinux \
                 {:.0} MiB, initrd file {:.0} MiB, rest of QEMU {:.0} MiB, shim + helpers \
                 {:.0} MiB. Done: the translation cache is capped (`tb-size=32`), the \
                 vmlinux's zero tails are zero-fill and its segments packed without the \
                 2 MiB file padding, once the guest has booted QEMU's pages of the kernel and \
                 initrd files are paged out (`process_madvise`, ~16 MiB), free page \
                 reporting returns what the guest frees in 128 KiB blocks (Linux 6.1 used \
                 4 MiB without hugetlb: guest RAM touched 38 -> 33 MiB), the agent is built \
                 with fat LTO (4.25 -> 3.62 MB), and the guest kernel is built for VMs \
                 from Debian's source (`guest/image/kernel/guest.config`, all built in: \
                 15 MiB of loaded segments against the 57 MiB of Debian's generic kernel, \
                 no modules; per pod 220 -> 140 MiB, guest RAM touched 96 -> 39 MiB), \
                 whose 2 MiB alignment gap after .text is zero-fill too.{} \
                 Tried: `tb-size=16` (-17 MiB, but start +130 ms and exec 57 -> 200 ms), \
                 one malloc arena in QEMU (no change). Left: the translation cache is full \
                 after boot (32 MiB of host code for the guest's boot and agent), and \
                 QEMU's own anonymous memory (softmmu TLBs, heap: ~16 MiB) and relocated \
                 library data (capstone alone 1.3 MiB) are per process. Next: a smaller \
                 kernel text (`CC_OPTIMIZE_FOR_SIZE`, fewer features: it sits in guest \
                 RAM), a QEMU built without the libraries it does not use here.",
                mib(total.pss_kib),
                mib(q.guest_ram.pss_kib),
                mib(q.tcg_code.pss_kib),
                mib(q.kernel_file.pss_kib),
                mib(q.initrd_file.pss_kib),
                mib(q.other.pss_kib),
                mib(total.pss_kib)
                    - mib(q.guest_ram.pss_kib + q.tcg_code.pss_kib + q.kernel_file.pss_kib)
                    - mib(q.initrd_file.pss_kib + q.other.pss_kib),
                shared_per_pod(r)
            ));
        }
    }
    for m in &r.shim_mem {
        if m.kata.pss_kib * 3 > m.runc.pss_kib {
            out.push(format!(
                "shim PSS with {} container(s) is {:.1} MiB, over a third of runc's shim \
                 ({:.1} MiB); {} threads. Most of it is the binary's text that runs (page \
                 fault-around maps its neighbours too). Done: cargo profile `shim` (opt-level \
                 z, fat LTO, one codegen unit, panic=abort: text 7.1 -> 3.6 MB), a \
                 fixed-address executable (no dirtied `.data.rel.ro`), task events encoded \
                 without protobuf's reflection tables, one malloc arena, relay buffers that \
                 grow only under load. Next: fewer crates in the daemon (regex, toml_edit), \
                 a current-thread runtime.",
                m.containers,
                mib(m.kata.pss_kib),
                mib(m.runc.pss_kib),
                m.kata_threads
            ));
        }
    }
    if r.tput_kata.n() > 0 && r.tput_kata.median() < 0.8 * r.tput_floor.median() {
        out.push(format!(
            "stdout moves {:.0} MiB/s against the raw vsock floor's {:.0} MiB/s. Since the \
             guest CPU lost ERMS (`-cpu max,erms=off`: QEMU 7.2's TCG ran the kernel's \
             `rep movsb` copies a byte per loop turn) the guest's pipes are no longer the \
             limit: in the guest `dd | cat >/dev/null` moves ~366 MiB/s (was ~80) and \
             kata stdout went 45 -> 90 MiB/s. Now the ReadStdout round trip is: 1 MiB \
             answers take ~10 ms each (the shim's reader waits on the RPC 2.6 s of a \
             256 MiB run, on the fifo writer ~0), while QEMU's vCPU is ~58% busy, the \
             shim 19%, vhost-device-vsock 6%: the stream waits on the transport more \
             than on any CPU. Done: 1 MiB guest pipes and reads sized by FIONREAD, fixed \
             malloc thresholds in the agent, the shim's next read overlapping its fifo \
             write, 1 MiB output fifos, a 256 KiB gate buffer, no ERMS. Tried: 2 MiB and \
             512 KiB chunks (slower / the same), vhost-device-vsock `--tx-buffer-size` \
             1 MiB (the stream stalled for good). Next: a raw vsock stream per stdio \
             that the agent feeds with splice(2) (no protobuf framing, no request per \
             chunk), the vsock gate's relay hop removed once vhost-device-vsock needs no \
             guard.",
            r.tput_kata.median(),
            r.tput_floor.median()
        ));
    }
    out
}

/// With several pods, QEMU's and the helpers' binaries and libraries are
/// shared: the scaling section's largest N, as peak PSS per pod.
fn shared_per_pod(r: &Results) -> String {
    match r
        .scaling
        .iter()
        .filter(|p| p.peak_pss_mib.n() > 0)
        .max_by_key(|p| p.pods)
    {
        Some(p) if p.pods > 1 => format!(
            " With {} pods at once the shared binaries and libraries split: peak PSS \
             {:.0} MiB per pod (section 6).",
            p.pods,
            p.peak_pss_mib.median() / p.pods as f64
        ),
        _ => String::new(),
    }
}

/// The ratio table as Markdown (also what `kata-bench` prints).
pub fn ratio_table(r: &Results) -> String {
    let mut s = String::from(
        "| measure | ours | reference | ratio | target | met |\n|---|---|---|---|---|---|\n",
    );
    for row in rows(r) {
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {} | {} |",
            row.what, row.ours, row.reference, row.ratio, row.target, met
        );
    }
    s
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# kata shim benchmarks\n");
    let _ = writeln!(
        s,
        "Run {} on {}; accelerator {}; guest {} vCPU / {} MiB; took {:.0} s. \
         Figures are `median (min–max, n)`.\n",
        r.started,
        r.host,
        r.accel,
        super::floor::VCPUS,
        super::floor::MEMORY_MIB,
        r.duration_s
    );
    let _ = writeln!(s, "## Ratios\n\n{}", ratio_table(r));

    let _ = writeln!(s, "## 1. Pod start (`ctr run --rm … true`, ms)\n");
    let _ = writeln!(
        s,
        "The floor: QEMU with PVH boot of the same `vmlinux`, q35, the same accelerator, vCPUs \
         and memory, `quiet`, hybrid vsock through vhost-device-vsock (started before the \
         clock starts), and a static init that loads the image's vsock modules (none with \
         the project's kernel: built in) and writes one byte to port 1024; timed from \
         QEMU's launch to that byte on the host's `<uds>_1024` listener. The ctr figures \
         include teardown (`--rm`).\n"
    );
    let _ = writeln!(s, "| side | wall time |\n|---|---|");
    let _ = writeln!(s, "| kata (this shim) | {} |", r.start_kata.show(0));
    let _ = writeln!(s, "| runc | {} |", r.start_runc.show(0));
    let _ = writeln!(
        s,
        "| VM floor (QEMU launch → first vsock byte) | {} |",
        r.start_floor.show(0)
    );
    let overhead = r.start_kata.median() - r.start_runc.median() - r.start_floor.median();
    let _ = writeln!(
        s,
        "\nOverhead over runc + floor: **{overhead:.0} ms** (medians).\n"
    );
    if !r.phases.is_empty() {
        let _ = writeln!(
            s,
            "Shim phases (from its `phase done` log lines, ms):\n\n| phase | time |\n|---|---|"
        );
        let mut sum = 0.0;
        for (p, v) in &r.phases {
            // "phase.part" lines break a phase down: already in its total.
            if !p.contains('.') {
                sum += v.median();
            }
            let _ = writeln!(s, "| {p} | {} |", v.show(0));
        }
        let _ = writeln!(
            s,
            "| outside the phases (containerd, ctr, shim start, IO, exit, delete) | {:.0} |\n",
            r.start_kata.median() - sum
        );
    }

    let _ = writeln!(s, "## 2. Shim daemon memory (KiB)\n");
    let _ = writeln!(
        s,
        "| containers in the pod | kata RSS | kata PSS | kata USS | kata threads | runc shim RSS | runc shim PSS | runc shim USS | runc threads |\n|---|---|---|---|---|---|---|---|---|"
    );
    for m in &r.shim_mem {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.containers,
            m.kata.rss_kib,
            m.kata.pss_kib,
            m.kata.uss_kib,
            m.kata_threads,
            m.runc.rss_kib,
            m.runc.pss_kib,
            m.runc.uss_kib,
            m.runc_threads
        );
    }

    let _ = writeln!(
        s,
        "\nPSS splits pages shared between processes (the shim binary's text between \
         shims of all pods on the host, including other users' runs): a lone shim shows \
         more PSS than one of many.\n"
    );
    let _ = writeln!(
        s,
        "## 3. Per-pod host memory (one pod, `sleep`, KiB)\n\n| process | RSS | PSS |\n|---|---|---|"
    );
    let mut total = Mem::default();
    for (name, m) in &r.pod_mem {
        total = total + *m;
        let _ = writeln!(s, "| {name} | {} | {} |", m.rss_kib, m.pss_kib);
    }
    let _ = writeln!(s, "| **total** | {} | {} |\n", total.rss_kib, total.pss_kib);
    let q = &r.qemu;
    let _ = writeln!(
        s,
        "QEMU by mapping (PSS, KiB):\n\n| part | PSS |\n|---|---|\n\
         | guest RAM the guest touched (memfd backend) | {} |\n\
         | TCG translation cache (anonymous rwx) | {} |\n\
         | QEMU's mapping of the `-kernel` file (PVH vmlinux; paged out after boot) | {} |\n\
         | QEMU's mapping of the `-initrd` file (paged out after boot) | {} |\n\
         | the rest of QEMU (heap, binary, libraries) | {} |\n",
        q.guest_ram.pss_kib,
        q.tcg_code.pss_kib,
        q.kernel_file.pss_kib,
        q.initrd_file.pss_kib,
        q.other.pss_kib
    );

    let _ = writeln!(
        s,
        "## 4. Exec latency (`ctr task exec … true`, ms)\n\n| side | round trip |\n|---|---|\n| kata | {} |\n| runc | {} |\n",
        r.exec_kata.show(1),
        r.exec_runc.show(1)
    );

    let _ = writeln!(s, "## 5. Stdout throughput (MiB/s)\n");
    if r.tput_kata.n() > 0 {
        let _ = writeln!(
            s,
            "{} MiB of `dd if=/dev/zero bs=1M` through `ctr run`, ctr's stdout read by the bench \
             and written to a file; timed from the first byte to EOF. Floor: the trivial init \
             streaming the same bytes over vsock port 1024 straight to a host socket.\n\n| side | throughput |\n|---|---|\n| kata | {} |\n| runc | {} |\n| raw vsock floor | {} |\n",
            r.tput_mib,
            r.tput_kata.show(0),
            r.tput_runc.show(0),
            r.tput_floor.show(0)
        );
    } else {
        let _ = writeln!(s, "skipped in this run\n");
    }

    let _ = writeln!(s, "## 6. Scaling (N pods started at once)\n");
    if r.scaling.is_empty() {
        let _ = writeln!(s, "skipped in this run\n");
    } else {
        let _ = writeln!(
            s,
            "![scaling](scaling.svg)\n\n| N | time until all run (ms) | peak PSS of all shim trees (MiB) |\n|---|---|---|"
        );
        for p in &r.scaling {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                p.pods,
                p.time_ms.show(0),
                p.peak_pss_mib.show(0)
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "## 7. Shim RPC overhead with fakes\n");
    if r.rpc_us.is_empty() {
        let _ = writeln!(s, "skipped in this run\n");
    } else {
        let _ = writeln!(
            s,
            "The shim library's Task service with the fake hypervisor and fake agent, called \
             through the `Task` trait (no ttrpc socket), {} pod lifecycles. Process CPU time per \
             lifecycle (create, start, state, exec + start, kill, wait, delete of exec and init): \
             **{:.2} ms**.\n\n| RPC | latency (µs) |\n|---|---|",
            r.rpc_lifecycles, r.rpc_cpu_ms_per_pod
        );
        for (k, v) in &r.rpc_us {
            let _ = writeln!(s, "| {k} | {} |", v.show(0));
        }
        let _ = writeln!(s);
    }
    let found = findings(r);
    if !found.is_empty() {
        let _ = writeln!(s, "## Where targets are missed\n");
        for f in &found {
            let _ = writeln!(s, "- {f}");
        }
        let _ = writeln!(s);
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn mem_json(m: &Mem) -> Value {
    json!({"rss_kib": m.rss_kib, "pss_kib": m.pss_kib, "uss_kib": m.uss_kib})
}

pub fn json(r: &Results) -> Value {
    json!({
        "started": r.started,
        "host": r.host,
        "accel": r.accel,
        "duration_s": r.duration_s,
        "guest": {"vcpus": super::floor::VCPUS, "memory_mib": super::floor::MEMORY_MIB},
        "pod_start_ms": {
            "kata": r.start_kata.json(),
            "runc": r.start_runc.json(),
            "floor": r.start_floor.json(),
            "phases": r.phases.iter().map(|(k, v)| (k.clone(), v.json())).collect::<serde_json::Map<_, _>>(),
        },
        "exec_ms": {"kata": r.exec_kata.json(), "runc": r.exec_runc.json()},
        "shim_memory": r.shim_mem.iter().map(|m| json!({
            "containers": m.containers,
            "kata": mem_json(&m.kata), "kata_threads": m.kata_threads,
            "runc": mem_json(&m.runc), "runc_threads": m.runc_threads,
        })).collect::<Vec<_>>(),
        "pod_memory": {
            "by_process": r.pod_mem.iter().map(|(k, v)| (k.clone(), mem_json(v))).collect::<serde_json::Map<_, _>>(),
            "qemu": {
                "guest_ram": mem_json(&r.qemu.guest_ram),
                "tcg_code": mem_json(&r.qemu.tcg_code),
                "kernel_file": mem_json(&r.qemu.kernel_file),
                "initrd_file": mem_json(&r.qemu.initrd_file),
                "other": mem_json(&r.qemu.other),
            },
        },
        "stdout_mib_per_s": {
            "mib": r.tput_mib,
            "kata": r.tput_kata.json(), "runc": r.tput_runc.json(), "floor": r.tput_floor.json(),
        },
        "scaling": r.scaling.iter().map(|p| json!({
            "pods": p.pods, "time_ms": p.time_ms.json(), "peak_pss_mib": p.peak_pss_mib.json(),
        })).collect::<Vec<_>>(),
        "ratios": rows(r).iter().map(|row| json!({
            "what": row.what, "ratio": if row.ratio.is_finite() { json!(row.ratio) } else { Value::Null },
            "target": row.target, "met": row.met,
        })).collect::<Vec<_>>(),
        "shim_rpc_on_fakes": {
            "lifecycles": r.rpc_lifecycles,
            "cpu_ms_per_pod": r.rpc_cpu_ms_per_pod,
            "latency_us": r.rpc_us.iter().map(|(k, v)| (k.clone(), v.json())).collect::<serde_json::Map<_, _>>(),
        },
        "findings": findings(r),
        "notes": r.notes,
        "failed_sections": r.failed,
    })
}

/// Time until all pods run against N: medians joined by a line, min–max bars.
pub fn svg(r: &Results) -> String {
    let (w, h) = (640.0, 400.0);
    let (l, rt, t, b) = (70.0, 20.0, 40.0, 50.0);
    let pts: Vec<(f64, f64, f64, f64)> = r
        .scaling
        .iter()
        .map(|p| {
            (
                p.pods as f64,
                p.time_ms.median() / 1000.0,
                p.time_ms.min() / 1000.0,
                p.time_ms.max() / 1000.0,
            )
        })
        .collect();
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    let ymax = pts.iter().map(|p| p.3).fold(1.0, f64::max) * 1.1;
    let x = |v: f64| l + (w - l - rt) * v / xmax;
    let y = |v: f64| h - b - (h - t - b) * v / ymax;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">Pods started at once: time until all run</text>\n\
         <line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">pods (N)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">seconds</text>\n",
        w / 2.0,
        h - b,
        w - rt,
        h - b,
        h - b,
        (l + w - rt) / 2.0,
        h - 12.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0,
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{:.1}\" x2=\"{l}\" y2=\"{:.1}\" stroke=\"black\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.1}</text>",
            l - 4.0,
            y(v),
            y(v),
            l - 6.0,
            y(v) + 4.0
        );
    }
    for p in &pts {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#4477aa\" stroke-width=\"2\"/>",
            x(p.0),
            h - b + 16.0,
            p.0,
            x(p.0),
            y(p.2),
            x(p.0),
            y(p.3)
        );
    }
    let line: Vec<String> = pts
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#4477aa\" stroke-width=\"2\"/>",
        line.join(" ")
    );
    for p in &pts {
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"#4477aa\"/><text x=\"{:.1}\" y=\"{:.1}\">{:.1} s</text>",
            x(p.0),
            y(p.1),
            x(p.0) + 6.0,
            y(p.1) - 6.0,
            p.1
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Writes report.md, report.json and scaling.svg into `dir`.
pub fn write(r: &Results, dir: &Path) -> Result<()> {
    std::fs::write(dir.join("report.md"), markdown(r))?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&json(r))? + "\n",
    )?;
    std::fs::write(dir.join("scaling.svg"), svg(r))?;
    Ok(())
}
