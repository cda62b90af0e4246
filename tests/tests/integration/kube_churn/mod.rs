//! Kubernetes mode under churn and API outages, end to end: the fake API server and the agent
//! in the node's namespace, the agent's `--upstream` at a stand-in IMDS that hands the *node's*
//! credentials (account 111122223333) to whoever reaches it, fake pods whose cgroups follow
//! the systemd driver's layout. Run as root through `cargo xtask test`.
//!
//! * Churn: 200 pods (UIDs, cgroups) in 10 waves of 20 over 20 reused pod IPs (one network
//!   namespace per slot, taken over by each wave's pod: a recycled pod IP), 50 roles with
//!   distinct keys; half the slots reuse their pod name (StatefulSet style), half the pods
//!   are deleted gracefully. Each pod's process asks as soon as it starts: before, together
//!   with or after the API server publishes the pod. Every pod gets its own role, never
//!   another's (not even the previous pod's at its IP) and never the node's; a process left
//!   in a deleted pod's cgroup, at the IP the next pod now has, gets 404.
//! * Burst: 20 containers starting a few milliseconds apart, each a fast client (`curl`)
//!   asking at once, within milliseconds of its cgroup's creation: each gets its role.
//! * Outage: while the API server answers 500 and drops watches, known pods keep being
//!   served from the agent's index; when it is back the agent resyncs, by replay and by a
//!   relist after 410 Gone: pods deleted meanwhile lose access, pods added or changed
//!   meanwhile get their roles.
//!
//!
//! `support.rs` holds the fixtures and tallies; `outage.rs` the outage test.

mod outage;
mod support;

use support::*;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Result;
use iamlet_tests::{skip_unless_privileged, ChildGuard, TestNode};
use serde_json::json;

#[test]
fn kube_churn_200_pods_in_waves_get_only_their_own_roles() {
    skip_unless_privileged!();
    let started = Instant::now();
    let node = TestNode::new().expect("creating the test node");
    let (s, agent) = setup(&node, "10s").expect("setting up the fake API server and the agent");
    // One network namespace per slot: each wave's pod in slot i has the same IP. Each pod's
    // cgroup is created as its process starts, as the container runtime does.
    let slots = (0..PER_WAVE)
        .map(|i| node.add_pod(&format!("netslot-{i:02}")))
        .collect::<Result<Vec<_>>>()
        .expect("adding the network slots");
    let mut t = Tally::default();
    let mut previous: Vec<Churner> = Vec::new();
    for w in 0..WAVES {
        let mut wave: Vec<Churner> = (0..PER_WAVE)
            .map(|i| Churner::new(w * PER_WAVE + i, ORDERS[(i + w) % 3]))
            .collect();
        // Each pod also asks for the role of the pod whose IP it took over.
        let before = |i| match w {
            0 => (role_of(i) + 1) % ROLES,
            _ => role_of((w - 1) * PER_WAVE + i),
        };
        for (i, c) in wave.iter_mut().enumerate() {
            if c.order == Order::ProcessFirst {
                c.start(&node, &slots[i], before(i))
                    .unwrap_or_else(|e| panic!("starting {}: {e:#}", name(c.n)));
            }
        }
        for c in wave.iter_mut().filter(|c| c.order == Order::ProcessFirst) {
            c.line(true)
                .unwrap_or_else(|e| panic!("the first answer in {}: {e:#}", name(c.n)));
        }
        std::thread::sleep(Duration::from_millis(100)); // their requests are in flight
        for (i, c) in wave.iter_mut().enumerate() {
            if let Some(old) = previous.get(i) {
                unpublish(&s.api, old.n)
                    .unwrap_or_else(|e| panic!("deleting {}: {e:#}", name(old.n)));
            }
            if c.order == Order::Together {
                c.start(&node, &slots[i], before(i))
                    .unwrap_or_else(|e| panic!("starting {}: {e:#}", name(c.n)));
            }
            publish(&s.api, c.n, role_of(c.n))
                .unwrap_or_else(|e| panic!("publishing {}: {e:#}", name(c.n)));
            if c.order == Order::ApiFirst {
                c.start(&node, &slots[i], before(i))
                    .unwrap_or_else(|e| panic!("starting {}: {e:#}", name(c.n)));
            }
        }
        for c in &mut wave {
            t.first_round(c)
                .unwrap_or_else(|e| panic!("the first round in {}: {e:#}", name(c.n)));
        }
        let roles: Vec<usize> = wave.iter().map(|c| role_of(c.n)).collect();
        check_leftovers(&mut t, &mut previous, &roles)
            .expect("asking from the previous wave's leftover processes");
        previous = wave; // the old pods go: processes killed, cgroups removed
    }
    for c in &previous {
        unpublish(&s.api, c.n).unwrap_or_else(|e| panic!("deleting {}: {e:#}", name(c.n)));
    }
    let others: Vec<_> = previous
        .iter()
        .map(|c| (role_of(c.n) + 1) % ROLES)
        .collect();
    check_leftovers(&mut t, &mut previous, &others)
        .expect("asking from the last wave's leftover processes");
    drop(previous);

    let lookups = |o: Option<Order>| {
        let v = (t.first_list_ms.iter()).filter(|(x, _)| o.is_none_or(|o| o == *x));
        percentiles(v.map(|(_, ms)| *ms).collect())
    };
    let waited = (t.first_list_ms.iter())
        .filter(|(o, ms)| *o == Order::ProcessFirst && *ms > 50.0)
        .count();
    let (all, process_first) = (lookups(None), lookups(Some(Order::ProcessFirst)));
    let (together, api_first) = (
        lookups(Some(Order::Together)),
        lookups(Some(Order::ApiFirst)),
    );
    let (full, secs) = (
        percentiles(t.first_total_ms.clone()),
        started.elapsed().as_secs_f64(),
    );
    let (pods, found_404, want_404) = (WAVES * PER_WAVE, t.expected_404.0, t.expected_404.1);
    println!(
        "kube churn: {pods} pods in {WAVES} waves of {PER_WAVE} over {PER_WAVE} reused pod IPs, {ROLES} roles
  requests: {}
  wrong-role answers: {}
  node-credential answers: {}
  404 where expected: {found_404} of {want_404} (node role and previous pod's role names; all role paths of deleted pods' leftover processes)
  leftover rounds still served their own role (deletion not seen yet; retried): {}
  first role lookup (curl at container start): all {all}
    process first {process_first}; {waited} of them waited > 50 ms for the pod
    together {together}
    API first {api_first}
  then token + role list + credentials (python): {full}
  runtime: {secs:.1} s",
        t.requests, t.wrong, t.node, t.stale_rounds
    );
    t.finish(&agent).expect("the churn verdict");
}

/// A burst of container starts a few milliseconds apart (a Job's parallel pods, a scale-up),
/// each container a fast client (`curl`, like a Go program) listing its role at once: each
/// must get its role, though its cgroup appeared just before the agent hears from it.
#[test]
fn kube_churn_burst_of_container_starts_gets_their_roles() {
    skip_unless_privileged!();
    let node = TestNode::new().expect("creating the test node");
    let (s, agent) = setup(&node, "10s").expect("setting up the fake API server and the agent");
    let slot = node.add_pod("netslot").expect("adding pod netslot");
    let mut t = Tally::default();
    let ns: Vec<usize> = (500..500 + PER_WAVE).collect();
    for &n in &ns {
        publish(&s.api, n, role_of(n)).unwrap_or_else(|e| panic!("publishing {}: {e:#}", name(n)));
    }
    std::thread::sleep(Duration::from_millis(500)); // the agent has seen the pods
    let mut started = Vec::new();
    for (i, &n) in ns.iter().enumerate() {
        let pod = node
            .add_pod_in_netns(&container(n), &slot)
            .unwrap_or_else(|e| {
                panic!("adding container {n} in the slot's network namespace: {e:#}")
            });
        let mut cmd = pod.command("curl");
        let url = format!("http://169.254.169.254{LIST}");
        cmd.args(["-s", "-m", "20", "-w", "\n%{http_code}", &url]);
        let child = ChildGuard::spawn(cmd.stdout(Stdio::piped())).expect("spawning curl");
        let mut c = Churner::new(n, Order::ApiFirst);
        c.pod = Some(pod);
        started.push((c, child));
        std::thread::sleep(Duration::from_millis(3 * (i as u64 % 8)));
    }
    for (c, child) in started {
        let out = child
            .into_inner()
            .wait_with_output()
            .expect("waiting for curl");
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        let v = Verdict::of(
            &json!({"fast": [status.parse::<u64>().unwrap_or(0), body]}),
            role_of(c.n),
        );
        t.count(&c, "at start", &v);
        if v.own != 1 && v.clean() {
            t.fail(&c, &format!("at start got {status} {body:?}"));
        }
    }
    println!(
        "kube churn, a burst of {} container starts: {} pods not served their role, {} wrong roles, {} node credentials",
        ns.len(), t.failed_cgroups.len(), t.wrong, t.node
    );
    t.finish(&agent).expect("the churn verdict");
}
