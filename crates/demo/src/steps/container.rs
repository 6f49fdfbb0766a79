//! The walkthrough's second half with a real runtime: a pause container with no network of the runtime's own,
//! its namespace linked as `/var/run/netns/pause1`, wired by the same plugin call, joined by a second container,
//! and a ping from inside it to the first pod.

use super::{Demo, Error, Holder, Pod, StepResult};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use trestle_netlink::{format_mac, Netlink};
use trestle_operator::show;

/// Where the walkthrough links the container's namespace.
const NETNS_LINK: &str = "/var/run/netns/pause1";

impl Demo<'_> {
    fn engine(&mut self) -> &mut super::Engine {
        self.engine
            .as_mut()
            .expect("runtime steps run with an engine")
    }

    fn runtime_name(&self) -> &'static str {
        self.engine
            .as_ref()
            .map(|e| e.kind().name())
            .unwrap_or("the runtime")
    }

    /// The runtime half: the pause container, its wiring, the joined container and the ping.
    pub(super) fn container_steps(&mut self) -> StepResult {
        self.start_pause_container()?;
        self.wire_container()?;
        self.join_container()?;
        self.ping_from_container()
    }

    fn start_pause_container(&mut self) -> StepResult {
        let rt = self.runtime_name();
        self.begin(
            &format!("{rt} starts a real pause container"),
            "A CRI runtime starts the pod's sandbox from the pause image. Here the runtime runs a container with no\n\
             network of its own (only lo): its network namespace is left for CNI to wire, as the kubelet's runtime\n\
             leaves it. No registry is needed: the demo builds a one-layer image from the machine's static busybox.",
        )?;
        let (path, busybox) =
            super::super::image::busybox().map_err(|e| self.fail(Error::Image(e)))?;
        let reference = self.engine().image.clone();
        let archive = super::super::image::docker_archive(
            &busybox,
            &reference,
            trestle_operator::image::archive::oci_arch(),
        );
        let loaded = self
            .engine()
            .load_image(&archive)
            .map_err(self.failed("cannot load the demo's image"))?;
        self.n.cmd(&format!(
            "{}   # {} ({} KiB) in a docker-save archive",
            loaded.line,
            path.display(),
            busybox.len() / 1024
        ));
        self.n.out(&loaded.stdout);
        let (pause, started) = self
            .engine()
            .start_pause()
            .map_err(self.failed("cannot start the pause container"))?;
        self.n.cmd(&started.line);
        self.n.out(&started.stdout);
        let (pid, inspected) = self
            .engine()
            .pid(&pause)
            .map_err(self.failed("cannot find the pause container's process"))?;
        self.n.cmd(&format!("pid=$({})   # {pid}", inspected.line));
        self.containers.push(pause.clone());
        let link = self.link_netns(pid)?;
        self.pods.push(Pod {
            id: pause.id.clone(),
            holder: Holder::Container {
                pid,
                link: link.clone(),
            },
            attached: false,
        });
        let text = self.show_container_netns()?;
        let names: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(' '))
            .filter_map(|l| l.split(": ").nth(1))
            .collect();
        if names != ["lo"] {
            return Err(self.fail(Error::Expectation {
                wanted: "the pause container's namespace to hold only lo".into(),
                got: text,
            }));
        }
        self.n.ok(&format!(
            "container {} (pid {pid}) has a network namespace of its own with only lo",
            pause.name
        ));
        Ok(())
    }

    /// `ip netns exec pause1 ip a`, read through netlink in the container's namespace (the last pod's).
    fn show_container_netns(&mut self) -> StepResult<String> {
        let ns = self.pod_ns(self.pods.len() - 1)?;
        let text = ns
            .run(|| Netlink::open().and_then(|mut nl| show::ip_addr(&mut nl, None)))
            .map_err(self.failed("cannot enter the container's network namespace"))?
            .map_err(self.failed("cannot read the container's links"))?;
        self.n.cmd("ip netns exec pause1 ip a");
        self.n.out(&text);
        Ok(text)
    }

    /// `ln -s /proc/$pid/ns/net /var/run/netns/pause1`, in the demo's private mount namespace when isolated.
    fn link_netns(&mut self, pid: u32) -> StepResult<PathBuf> {
        let target = format!("/proc/{pid}/ns/net");
        let link = PathBuf::from(NETNS_LINK);
        let dir = link.parent().expect("link has a directory");
        std::fs::create_dir_all(dir).map_err(self.failed("cannot create /var/run/netns"))?;
        std::os::unix::fs::symlink(&target, &link).map_err(
            self.failed("cannot link /var/run/netns/pause1 (remove it if it is left over)"),
        )?;
        self.netns_link = Some(link.clone());
        self.n.cmd(&format!("ln -s {target} {NETNS_LINK}"));
        if self.iso.isolated() {
            self.n.say(
                "  (in the demo's private mount namespace: the machine's /var/run/netns is not touched)",
            );
        }
        Ok(link)
    }

    fn wire_container(&mut self) -> StepResult {
        self.begin(
            "wire the container with the same plugin call",
            "The runtime's container is wired exactly like the first pod: the same config on stdin, CNI_CONTAINERID\n\
             the runtime's container ID, CNI_NETNS the namespace linked above.",
        )?;
        let index = self.pods.len() - 1;
        let want = format!("{}/24", Self::address_of(index));
        let inv = self.invocation("ADD", index);
        self.pods[index].attached = true;
        let stdout = self.call(&inv)?;
        self.n.out(&stdout);
        let text = self.show_container_netns()?;
        super::expect(&text, &format!("inet {want} scope global eth0"))
            .map_err(|e| self.fail(e))?;
        self.n.ok(&format!("the container's eth0 has {want}"));
        Ok(())
    }

    fn join_container(&mut self) -> StepResult {
        let rt = self.runtime_name();
        self.begin(
            "a second container joins the pause container's network",
            &format!(
                "Every other container of the pod is started in the pause container's network namespace: {rt} is told\n\
                 to share it (the walkthrough's `docker run --net=container:pause`), so the container sees the same eth0."
            ),
        )?;
        let pause = self.containers[0].clone();
        let pause_pid = match self.pods.last().map(|p| &p.holder) {
            Some(Holder::Container { pid, .. }) => *pid,
            _ => unreachable!("the pause container's pod is the last one"),
        };
        let (app, started) = self
            .engine()
            .start_joined(&pause, pause_pid)
            .map_err(self.failed("cannot start the second container"))?;
        self.containers.push(app.clone());
        self.n.cmd(&started.line);
        self.n.out(&started.stdout);
        let seen = self
            .engine()
            .exec(&app, &["ip", "addr", "show", "eth0"])
            .map_err(self.failed("cannot run ip in the second container"))?;
        self.n.cmd(&seen.line);
        self.n.out(&seen.stdout);
        let index = self.pods.len() - 1;
        let ns = self.pod_ns(index)?;
        let eth0 = ns
            .run(|| Netlink::open().and_then(|mut nl| nl.link_by_name("eth0")))
            .map_err(self.failed("cannot enter the container's network namespace"))?
            .map_err(self.failed("cannot read the container's eth0"))?;
        let mac = eth0.and_then(|l| l.mac).map(format_mac).unwrap_or_default();
        let want = format!("inet {}/24", Self::address_of(index));
        if mac.is_empty() || !seen.stdout.contains(&mac) || !seen.stdout.contains(&want) {
            return Err(self.fail(Error::Expectation {
                wanted: format!("the second container to see eth0 with {mac} and {want}"),
                got: seen.stdout,
            }));
        }
        let (app_pid, _) = self
            .engine()
            .pid(&app)
            .map_err(self.failed("cannot find the second container's process"))?;
        let same = ns_inode(app_pid).is_some() && ns_inode(app_pid) == ns_inode(pause_pid);
        if !same {
            return Err(self.fail(Error::Expectation {
                wanted: format!(
                    "container {} in the pause container's network namespace",
                    app.name
                ),
                got: format!(
                    "/proc/{app_pid}/ns/net is another namespace than /proc/{pause_pid}/ns/net"
                ),
            }));
        }
        self.n.ok(&format!(
            "{} sees the pause container's eth0 ({mac}): /proc/{app_pid}/ns/net is /proc/{pause_pid}/ns/net",
            app.name
        ));
        Ok(())
    }

    fn ping_from_container(&mut self) -> StepResult {
        let rt = self.runtime_name();
        self.begin(
            "ping the first pod from inside the container",
            &format!(
                "{rt} runs ping inside the pause container (the walkthrough's `docker exec pause ping 10.15.20.2`):\n\
                 from its eth0, over the veth pair and the bridge, to the first pod's eth0."
            ),
        )?;
        let pause = self.containers[0].clone();
        let shown = self
            .engine()
            .exec(&pause, &["ping", "-c", "2", "-W", "3", "10.15.20.2"])
            .map_err(self.failed("ping from inside the container"))?;
        self.n.cmd(&shown.line);
        self.n.out(&shown.stdout);
        if !shown.stdout.contains("64 bytes from 10.15.20.2")
            || !shown.stdout.contains(" 0% packet loss")
        {
            return Err(self.fail(Error::Expectation {
                wanted: "replies from 10.15.20.2 and no loss".into(),
                got: shown.stdout,
            }));
        }
        self.n
            .ok("the container reaches the first pod: 10.15.20.2 answered every echo");
        Ok(())
    }

    /// After DEL: removes the runtime's containers, the image and the namespace link, and checks none is left.
    pub(super) fn stop_containers(&mut self) -> StepResult {
        let rt = self.runtime_name();
        for (line, failed) in self.engine().remove_all() {
            self.n.cmd(&line);
            if let Some(why) = failed {
                self.n.out(&format!("(failed: {why})"));
            }
        }
        if let Some(link) = self.netns_link.clone() {
            self.n.cmd(&format!("rm {}", link.display()));
            // Forgotten only once gone, so a failure here is still cleaned up (and named) on the way out.
            std::fs::remove_file(&link).map_err(self.failed("cannot remove the namespace link"))?;
            self.netns_link = None;
        }
        let left = self
            .engine()
            .leftovers()
            .map_err(self.failed("cannot list the runtime's containers and images"))?;
        if !left.is_empty() {
            return Err(self.fail(Error::Expectation {
                wanted: format!("{rt} to hold none of the demo's containers or its image"),
                got: left.join(", "),
            }));
        }
        self.n.ok(&format!(
            "{rt} holds none of the demo's containers, and its image is gone"
        ));
        Ok(())
    }

    /// On failure or Ctrl-C: removes whatever the runtime made, quietly; returns what is still there.
    pub(super) fn remove_containers(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        if let Some(link) = self.netns_link.take() {
            if std::fs::remove_file(&link).is_err() {
                left.push(link.display().to_string());
            }
        }
        if let Some(engine) = self.engine.as_mut() {
            engine.remove_all();
            match engine.leftovers() {
                Ok(l) => left.extend(l),
                Err(e) => left.push(format!("(cannot tell: {e})")),
            }
        }
        left
    }
}

/// The inode of a process's network namespace: equal inodes, the same namespace.
fn ns_inode(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}
