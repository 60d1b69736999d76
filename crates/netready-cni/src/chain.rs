//! Running a conflist's chain for one attachment, as libcni does: ADD in order with each
//! plugin's result as the next one's `prevResult`; DEL in reverse with the cached result;
//! CHECK in order with the cached result (spec ≥ 0.4.0); STATUS per plugin (spec ≥ 1.1.0).

use std::collections::BTreeMap;
use std::sync::Arc;

use rscni_types::types::CNIResult;
use rscni_types::version::SpecVersion;
use serde_json::Value;

use crate::conflist::Conflist;
use crate::error::{Error, Result};
use crate::exec::{excerpt, Command, Exec, Invocation};

/// One pod's attachment to the network.
#[derive(Debug, Clone)]
pub struct Attachment {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: String,
    /// `CNI_NETNS`: the pod netns path.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
    /// Values for declared capabilities (`portMappings`, `bandwidth`, `dns`, ...), injected
    /// as `runtimeConfig` into the plugins that declare them.
    pub capability_args: BTreeMap<String, Value>,
}

/// A successful ADD.
#[derive(Debug, Clone)]
pub struct Added {
    /// The last plugin's result as it printed it: cached for DEL and CHECK.
    pub raw: Value,
    /// The same, parsed.
    pub result: CNIResult,
}

/// A network: its conflist and how plugins are run.
#[derive(Clone)]
pub struct Network {
    conflist: Arc<Conflist>,
    exec: Arc<dyn Exec>,
    /// An ADD result must give the pod an address (a pod network); the loopback network's
    /// gives none by design.
    needs_ip: bool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("conflist", &self.conflist)
            .finish()
    }
}

fn plugin_type(p: &Value) -> &str {
    p.get("type").and_then(Value::as_str).unwrap_or("?")
}

// === impl Network ===

impl Network {
    /// A network from a loaded conflist.
    pub fn new(conflist: Conflist, exec: Arc<dyn Exec>) -> Self {
        Network {
            conflist: Arc::new(conflist),
            exec,
            needs_ip: true,
        }
    }

    /// The loopback network container runtimes attach every pod to before its real network
    /// (`lo` up), with the `loopback` plugin.
    pub fn loopback(exec: Arc<dyn Exec>) -> Self {
        let conflist = crate::conflist::parse(
            br#"{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#,
            std::path::Path::new("<built-in loopback>"),
        )
        .expect("the built-in loopback conflist is valid");
        Network {
            needs_ip: false,
            ..Network::new(conflist, exec)
        }
    }

    /// The conflist.
    pub fn conflist(&self) -> &Conflist {
        &self.conflist
    }

    /// The config one plugin gets on stdin: its own keys plus `name`, `cniVersion`, the
    /// `runtimeConfig` of the capabilities it declares and `prevResult`.
    pub fn plugin_config(&self, plugin: &Value, att: &Attachment, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        let obj = conf.as_object_mut().expect("conflist plugins are objects");
        obj.insert("name".into(), Value::String(self.conflist.name.clone()));
        obj.insert(
            "cniVersion".into(),
            Value::String(self.conflist.cni_version.clone()),
        );
        let declared = plugin.get("capabilities").and_then(Value::as_object);
        let runtime: serde_json::Map<String, Value> = att
            .capability_args
            .iter()
            .filter(|(cap, _)| {
                declared
                    .and_then(|d| d.get(cap.as_str()))
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !runtime.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        if let Some(prev) = prev {
            obj.insert("prevResult".into(), prev.clone());
        }
        conf
    }

    async fn run(
        &self,
        plugin: &Value,
        command: Command,
        att: &Attachment,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>> {
        let conf = self.plugin_config(plugin, att, prev);
        let stdin = serde_json::to_vec(&conf).expect("JSON values serialize");
        self.exec
            .exec(Invocation {
                plugin: plugin_type(plugin),
                command,
                container_id: &att.container_id,
                netns: &att.netns,
                ifname: &att.ifname,
                args: &att.args,
                stdin,
            })
            .await
    }

    /// ADD of the whole chain. A plugin failing mid-chain leaves earlier plugins' work in
    /// place: the caller runs [`Network::del`] before trying again.
    pub async fn add(&self, att: &Attachment) -> Result<Added> {
        let mut prev: Option<Value> = None;
        for plugin in &self.conflist.plugins {
            let out = self.run(plugin, Command::Add, att, prev.as_ref()).await?;
            let bad = |reason: String| Error::BadResult {
                plugin: plugin_type(plugin).into(),
                command: Command::Add.label(),
                reason,
                excerpt: excerpt(&out),
            };
            let v: Value =
                serde_json::from_slice(&out).map_err(|e| bad(format!("not JSON: {e}")))?;
            if !v.is_object() {
                return Err(bad("not a JSON object".into()));
            }
            prev = Some(v);
        }
        let raw = prev.expect("a conflist has at least one plugin");
        let result = parse_result(&raw).map_err(|reason| Error::BadResult {
            plugin: plugin_type(self.conflist.plugins.last().expect("non-empty")).into(),
            command: Command::Add.label(),
            reason,
            excerpt: excerpt(raw.to_string().as_bytes()),
        })?;
        // A pod network that gave the pod no address has not set it up: containerd fails
        // such a sandbox too ("failed to find network info").
        if self.needs_ip
            && crate::runtime_config::pod_ips(&result, &att.netns, &att.ifname).is_empty()
        {
            return Err(Error::BadResult {
                plugin: plugin_type(self.conflist.plugins.last().expect("non-empty")).into(),
                command: Command::Add.label(),
                reason: format!("no IP address for {} in the result", att.ifname),
                excerpt: excerpt(raw.to_string().as_bytes()),
            });
        }
        Ok(Added { raw, result })
    }

    /// DEL of the whole chain, in reverse, with the cached result where the spec passes it.
    /// Goes on past a failing plugin so the others still release what they hold; returns
    /// every failure.
    pub async fn del(&self, att: &Attachment, cached: Option<&Value>) -> Result<()> {
        let prev = cached.filter(|_| self.conflist.version >= SpecVersion::new(0, 4, 0));
        let mut errors = Vec::new();
        for plugin in self.conflist.plugins.iter().rev() {
            if let Err(e) = self.run(plugin, Command::Del, att, prev).await {
                errors.push(e);
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }

    /// CHECK of the chain with the cached result; a no-op before spec 0.4.0 or with
    /// `disableCheck`.
    pub async fn check(&self, att: &Attachment, cached: &Value) -> Result<()> {
        if self.conflist.version < SpecVersion::new(0, 4, 0) || self.conflist.disable_check {
            return Ok(());
        }
        for plugin in &self.conflist.plugins {
            self.run(plugin, Command::Check, att, Some(cached)).await?;
        }
        Ok(())
    }

    /// STATUS of every plugin (spec ≥ 1.1.0; earlier versions have none and are ready).
    pub async fn status(&self) -> Result<()> {
        if self.conflist.version < SpecVersion::new(1, 1, 0) {
            return Ok(());
        }
        let att = Attachment {
            container_id: String::new(),
            netns: String::new(),
            ifname: String::new(),
            args: String::new(),
            capability_args: BTreeMap::new(),
        };
        for plugin in &self.conflist.plugins {
            self.run(plugin, Command::Status, &att, None).await?;
        }
        Ok(())
    }
}

/// Parses an ADD result of spec 0.3.0–1.1.0 (the 0.3/0.4 layout's extra `version` keys are
/// ignored).
pub fn parse_result(raw: &Value) -> std::result::Result<CNIResult, String> {
    let version = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .ok_or("missing cniVersion")?;
    let v: SpecVersion = version.parse().map_err(|e| format!("cniVersion: {e}"))?;
    if !v.is_supported() {
        return Err(format!("result version {version} is older than 0.3.0"));
    }
    serde_json::from_value(raw.clone()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
