//! The step that draws the wiring from the live state.

use super::super::picture::{self, Sandbox};
use super::{failed, masquerade_entries, Demo, Error, Holder, StepResult, BRIDGE};

impl Demo<'_> {
    /// What the picture's box of pod `i` says: which pod, and what holds its namespace.
    fn labels(&self, i: usize) -> (String, String) {
        let pod = &self.pods[i];
        let short: String = pod.id.chars().take(12).collect();
        match &pod.holder {
            Holder::Process(p) => (format!("pod {short}"), format!("pause: pid {}", p.pid())),
            Holder::Container { .. } => {
                let rt = self
                    .engine
                    .as_ref()
                    .map(|e| e.kind().name())
                    .unwrap_or("runtime");
                (format!("pod {short}"), format!("{rt}: pause + app"))
            }
        }
    }

    pub(super) fn draw_wiring(&mut self) -> StepResult {
        self.begin(
            "the wiring, drawn from the live state",
            "What the steps above built, read back just now through netlink (each sandbox's eth0 and its veth peer,\n\
             the bridge and its ports) and nftables (masquerade). Each box is a network namespace; each vertical line\n\
             is a veth pair: eth0 in the sandbox, the named end a port of the bridge in the host namespace.",
        )?;
        let mut sandboxes = Vec::new();
        for i in 0..self.pods.len() {
            let (title, holder) = self.labels(i);
            let ns = self.pod_ns(i)?;
            let sandbox = ns
                .run(|| picture::read_sandbox(title, holder, "eth0"))
                .map_err(self.failed("cannot enter a pod's network namespace"))?
                .map_err(self.failed("cannot read a pod's eth0"))?;
            sandboxes.push(sandbox);
        }
        let host = self
            .iso
            .in_host(|| -> Result<picture::Host, Error> {
                let masq = masquerade_entries()?
                    .iter()
                    .map(|e| e.subnet.to_string())
                    .collect();
                picture::read_host(BRIDGE, masq).map_err(failed("cannot read the bridge"))
            })
            .map_err(|e| self.fail(e))?;
        self.n.say("");
        self.n
            .out(&picture::render(&sandboxes, &host, self.charset));
        if let [.., pause, app] = self.containers.as_slice() {
            self.n.say(&format!(
                "  pause + app: containers {} and {}, one network namespace",
                pause.name, app.name
            ));
        }
        self.check_wiring(&sandboxes, &host)
    }

    /// Every sandbox hangs on the bridge by its own veth pair.
    fn check_wiring(&mut self, sandboxes: &[Sandbox], host: &picture::Host) -> StepResult {
        let ends: Vec<Option<&str>> = sandboxes
            .iter()
            .map(|s| picture::host_end(host, s))
            .collect();
        if ends.iter().any(Option::is_none) || host.ports.len() != sandboxes.len() {
            return Err(self.fail(Error::Expectation {
                wanted: format!(
                    "each of the {} sandboxes on {BRIDGE} by its own veth",
                    sandboxes.len()
                ),
                got: format!("bridge ports {:?}, sandbox peers {ends:?}", host.ports),
            }));
        }
        self.n.ok(&format!(
            "{} sandboxes, {} veth pairs, all ports of {BRIDGE}",
            sandboxes.len(),
            host.ports.len()
        ));
        Ok(())
    }
}
