//! The shim process (`start`, `delete`) and its Task service.
//!
//! containerd's Create fetches the image and mounts its layers and the container's overlay (the
//! agent measures each layer and asks the policy); Start asks the agent to create the container
//! (`create_container`, the policy again) and follows its output into containerd's fifos; Kill,
//! Exec and Delete go through the agent too. The group is launched by the first Create and shut
//! down when its last task is deleted; Shutdown ends the shim only when no task is left.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use coffer_host::annotation;
use coffer_host::launch::{self, AgentClient, Group, LaunchSpec};
use coffer_proto::ProcessSpec;
use containerd_shim::api;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, context::Context, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{
    Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult,
};

use crate::{spec, ShimError};

fn status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn unimplemented<T>(what: &str) -> TtrpcResult<T> {
    Err(status(
        Code::UNIMPLEMENTED,
        format!("coffer shim: {what} is not implemented"),
    ))
}

/// A shim error as containerd sees it: denials are FAILED_PRECONDITION, bad input
/// INVALID_ARGUMENT, the rest INTERNAL; the message is the error's chain.
fn to_ttrpc(e: ShimError) -> ttrpc::Error {
    let code = match &e {
        ShimError::Host(coffer_host::HostError::Denied { .. }) => Code::FAILED_PRECONDITION,
        ShimError::Annotation(_) | ShimError::Bundle { .. } => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    };
    status(code, format!("coffer: {e}"))
}

fn now() -> Timestamp {
    containerd_shim::util::timestamp().unwrap_or_default()
}

/// Lock, taking the state of a thread that panicked with it as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TaskState {
    Created,
    Running,
    Stopped,
}

#[derive(Debug)]
struct Exit {
    code: u32,
    at: Timestamp,
}

#[derive(Debug)]
struct Proc {
    state: TaskState,
    stdout: String,
    stderr: String,
    exit: Option<Exit>,
}

#[derive(Debug)]
struct Exec {
    proc: Proc,
    process: ProcessSpec,
}

#[derive(Debug)]
struct Task {
    bundle: String,
    proc: Proc,
    process: ProcessSpec,
    execs: BTreeMap<String, Exec>,
}

#[derive(Default)]
struct State {
    group: Option<Group>,
    /// HOST_DATA of the group's policy: every task of the group carries the same policy.
    host_data: Option<[u8; 32]>,
    tasks: BTreeMap<String, Task>,
    /// Layer blob digest -> where the agent mounted it.
    layers: BTreeMap<String, String>,
}

impl State {
    fn pid(&self) -> u32 {
        self.group.as_ref().map_or(0, |g| g.sandbox.id())
    }

    fn task(&mut self, id: &str) -> TtrpcResult<&mut Task> {
        self.tasks
            .get_mut(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("task {id} not found")))
    }

    fn client(&self) -> Result<AgentClient, ShimError> {
        let g = self.group.as_ref().ok_or_else(|| {
            ShimError::Host(coffer_host::HostError::Agent(
                "the group is not running".into(),
            ))
        })?;
        Ok(g.client()?)
    }

    /// End the group (nothing of it stays: sandbox, mounts, cgroups, run directory).
    fn end_group(&mut self) {
        if let Some(g) = self.group.take() {
            if let Err(e) = g.shutdown() {
                log::warn!("shutting the group down: {e}");
            }
        }
        self.host_data = None;
        self.layers.clear();
    }
}

struct Inner {
    namespace: String,
    /// containerd's gRPC socket.
    address: String,
    exit: Arc<ExitSignal>,
    publisher: Mutex<Option<RemotePublisher>>,
    state: Mutex<State>,
    changed: Condvar,
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = lock(&self.publisher).as_ref() {
            if let Err(e) = p.publish(Context::default(), topic, &self.namespace, event) {
                log::warn!("publishing {topic}: {e}");
            }
        }
    }
}

/// The crate's configuration for this shim: the shim waits for its own children (the sandbox),
/// so the crate's reaper, which would take their exit statuses first, is off.
pub fn config() -> Config {
    Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    }
}

/// The shim and its Task service (one per group).
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                address: args.address.clone(),
                exit: Arc::new(ExitSignal::default()),
                publisher: Mutex::new(None),
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
            }),
        }
    }

    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        // containerd runs `start` in the bundle.
        let bundle = std::env::current_dir()
            .map_err(|e| containerd_shim::Error::Other(format!("current directory: {e}")))?;
        let annotations = spec::load(&bundle)
            .map(|s| spec::annotations(&s))
            .unwrap_or_default();
        let grouping = spec::grouping(&annotations, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // containerd cleans up after a shim that died: end the group it left, if the group was
        // this container's own (a Pod's group is the sandbox shim's to end).
        if let Ok(bundle) = std::env::current_dir() {
            if let Ok(s) = spec::load(&bundle) {
                let annotations = spec::annotations(&s);
                let id = bundle
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if spec::grouping(&annotations, &id) == id {
                    end_orphan(&spec::group_name(&self.inner.namespace, &id));
                }
            }
        }
        let mut r = DeleteResponse::new();
        r.set_exit_status(137);
        r.set_exited_at(now());
        Ok(r)
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *lock(&self.inner.publisher) = Some(publisher);
        self.clone()
    }
}

/// Kill a group whose shim is gone (its sandbox, by the pid it recorded) and remove its files.
fn end_orphan(name: &str) {
    let dir = launch::group_dir(&crate::coffer_home(), name);
    // containerd runs `delete` after every shim, also one that ended its group itself, which
    // leaves no directory: nothing to end then (and no wait for the cgroup sweep, which cost
    // 100 ms of every `ctr run --rm`).
    if !dir.exists() {
        return;
    }
    if let Ok(pid) = std::fs::read_to_string(dir.join("pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    launch::sweep_cgroups();
    let _ = std::fs::remove_dir_all(dir);
}

impl Service {
    /// Create: image layers fetched and measured by the agent, the overlay mounted (both
    /// through the policy); the group is launched by its first task.
    fn create_task(&self, req: &api::CreateTaskRequest) -> Result<u32, ShimError> {
        let bundle = PathBuf::from(&req.bundle);
        let oci = spec::load(&bundle)?;
        let annotations = spec::annotations(&oci);
        let policy = annotation::decode(
            annotations
                .get(annotation::POLICY_ANNOTATION)
                .map(String::as_str),
        )?;
        let host_data = coffer_policy::digest(&policy);
        let process = spec::process_spec(&bundle, &oci)?;
        let home = crate::coffer_home();
        let fetched = crate::content::fetch(
            &self.inner.address,
            &self.inner.namespace,
            &req.id,
            &home.join("shim/content"),
        )?;
        let mut st = lock(&self.inner.state);
        if st.tasks.contains_key(&req.id) {
            return Err(ShimError::Bundle {
                bundle: req.bundle.clone(),
                reason: format!("task {} exists", req.id),
            });
        }
        match st.host_data {
            Some(h) if h != host_data => {
                return Err(ShimError::Bundle {
                    bundle: req.bundle.clone(),
                    reason: "a group's containers carry one policy: this container's annotation differs from the group's".into(),
                })
            }
            Some(_) => {}
            None => {
                let grouping = spec::grouping(&annotations, &req.id);
                let group = launch::launch(LaunchSpec {
                    home: home.clone(),
                    name: spec::group_name(&self.inner.namespace, &grouping),
                    policy,
                    host_data,
                    agent_exe: launch::agent_exe()?,
                    volumes: Vec::new(),
                    network: coffer_host::net::NetworkMode::None,
                })?;
                st.group = Some(group);
                st.host_data = Some(host_data);
            }
        }
        let result = mount_container(&mut st, &req.id, &fetched);
        if let Err(e) = result {
            if st.tasks.is_empty() {
                st.end_group();
            }
            return Err(e);
        }
        st.tasks.insert(
            req.id.clone(),
            Task {
                bundle: req.bundle.clone(),
                proc: Proc {
                    state: TaskState::Created,
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    exit: None,
                },
                process,
                execs: BTreeMap::new(),
            },
        );
        Ok(st.pid())
    }

    /// Start a created task: `create_container` through the policy, then follow its output.
    fn start_task(&self, id: &str) -> Result<u32, ShimError> {
        let mut st = lock(&self.inner.state);
        let pid = st.pid();
        let socket = st.group.as_ref().map(|g| g.socket()).ok_or_else(|| {
            ShimError::Host(coffer_host::HostError::Agent(
                "the group is not running".into(),
            ))
        })?;
        let mut client = st.client()?;
        let task = st.tasks.get_mut(id).ok_or_else(|| ShimError::Bundle {
            bundle: id.into(),
            reason: "no such task".into(),
        })?;
        if task.proc.state != TaskState::Created {
            return Err(ShimError::Bundle {
                bundle: task.bundle.clone(),
                reason: format!("task {id} was started already"),
            });
        }
        let created = client.create_container(id, task.process.clone(), Vec::new());
        if let Err(e) = created {
            // As runc's shim does with a process that failed to start: the task is stopped
            // (containerd's client deletes only stopped tasks), with 126, "cannot execute".
            task.proc.state = TaskState::Stopped;
            task.proc.exit = Some(Exit {
                code: 126,
                at: now(),
            });
            drop(st);
            self.inner.changed.notify_all();
            return Err(e.into());
        }
        task.proc.state = TaskState::Running;
        let (stdout, stderr) = (task.proc.stdout.clone(), task.proc.stderr.clone());
        let inner = self.inner.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            let code = follow(&socket, &id, &stdout, &stderr);
            let mut st = lock(&inner.state);
            if let Some(t) = st.tasks.get_mut(&id) {
                t.proc.state = TaskState::Stopped;
                t.proc.exit = Some(Exit { code, at: now() });
            }
            drop(st);
            inner.changed.notify_all();
            inner.publish(
                topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: id.clone(),
                    id: id.clone(),
                    pid,
                    exit_status: code,
                    exited_at: Some(now()).into(),
                    ..Default::default()
                }),
            );
        });
        Ok(pid)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let mut st = lock(&self.inner.state);
        let pid = st.pid();
        let mut client = st.client()?;
        let task = st.tasks.get_mut(id).ok_or_else(|| ShimError::Bundle {
            bundle: id.into(),
            reason: "no such task".into(),
        })?;
        let exec = task
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::Bundle {
                bundle: id.into(),
                reason: format!("no exec {exec_id}"),
            })?;
        if exec.proc.state != TaskState::Created {
            return Err(ShimError::Bundle {
                bundle: id.into(),
                reason: format!("exec {exec_id} was started already"),
            });
        }
        let process = exec.process.clone();
        let (stdout, stderr) = (exec.proc.stdout.clone(), exec.proc.stderr.clone());
        exec.proc.state = TaskState::Running;
        drop(st);
        // The agent runs the process to its end and answers with its output (exec_in_container).
        let answer = client.exec(id, process);
        let code = match &answer {
            Ok(r) => {
                write_all(&stdout, &r.stdout);
                write_all(&stderr, &r.stderr);
                u32::try_from(r.exit).unwrap_or(255)
            }
            Err(_) => 126,
        };
        let mut st = lock(&self.inner.state);
        if let Some(e) = st.tasks.get_mut(id).and_then(|t| t.execs.get_mut(exec_id)) {
            e.proc.state = TaskState::Stopped;
            e.proc.exit = Some(Exit { code, at: now() });
        }
        drop(st);
        self.inner.changed.notify_all();
        answer?;
        self.inner.publish(
            topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid,
                ..Default::default()
            }),
        );
        self.inner.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.to_string(),
                id: exec_id.to_string(),
                pid,
                exit_status: code,
                exited_at: Some(now()).into(),
                ..Default::default()
            }),
        );
        Ok(pid)
    }
}

/// Mount each layer of the container's image once per group (the agent measures it and asks
/// `mount_device`), then its overlay (`mount_overlay`).
fn mount_container(
    st: &mut State,
    id: &str,
    fetched: &crate::content::Fetched,
) -> Result<(), ShimError> {
    let group = st.group.as_ref().ok_or_else(|| {
        ShimError::Host(coffer_host::HostError::Agent(
            "the group is not running".into(),
        ))
    })?;
    let mut client = group.client()?;
    let mut paths = Vec::new();
    for (layer, image) in fetched.image.layers.iter().zip(&fetched.layer_images) {
        let key = layer.digest.to_string();
        let target = match st.layers.get(&key) {
            Some(t) => t.clone(),
            None => {
                let target = format!("/run/coffer/layers/l{}", st.layers.len());
                let name = group.stage_layer(image)?;
                client.mount_layer(&target, &name)?;
                st.layers.insert(key, target.clone());
                target
            }
        };
        paths.push(target);
    }
    paths.reverse();
    client.mount_overlay(id, paths)?;
    Ok(())
}

/// Open a fifo containerd gave (none: empty path).
fn open_fifo(path: &str) -> Option<std::fs::File> {
    if path.is_empty() {
        return None;
    }
    OpenOptions::new().write(true).open(path).ok()
}

fn write_all(path: &str, text: &str) {
    if let Some(mut f) = open_fifo(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

/// Follow a container's output into containerd's fifos until it exits; its exit status (137
/// when the group ended under it).
fn follow(socket: &Path, id: &str, stdout: &str, stderr: &str) -> u32 {
    let mut out = open_fifo(stdout);
    let mut err = open_fifo(stderr);
    let code = AgentClient::connect(socket).and_then(|c| {
        c.attach(id, |stream, line| {
            let f = if stream == "stdout" {
                &mut out
            } else {
                &mut err
            };
            if let Some(f) = f {
                let _ = f.write_all(line.as_bytes());
                let _ = f.write_all(b"\n");
            }
        })
    });
    // The fifos close before the exit is reported: containerd reads them to their end.
    drop(out);
    drop(err);
    match code {
        Ok(c) => u32::try_from(c).unwrap_or(255),
        Err(e) => {
            log::warn!("following {id}: {e}");
            137
        }
    }
}

impl containerd_shim::Task for Service {
    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut st = lock(&self.inner.state);
        let pid = st.pid();
        let t = st.task(&req.id)?;
        let (proc, bundle) = if req.exec_id.is_empty() {
            (&t.proc, t.bundle.clone())
        } else {
            let e = t.execs.get(&req.exec_id).ok_or_else(|| {
                status(Code::NOT_FOUND, format!("exec {} not found", req.exec_id))
            })?;
            (&e.proc, t.bundle.clone())
        };
        let mut r = api::StateResponse::new();
        r.id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.bundle = bundle;
        r.pid = pid;
        r.stdout = proc.stdout.clone();
        r.stderr = proc.stderr.clone();
        r.set_status(match proc.state {
            TaskState::Created => Status::CREATED,
            TaskState::Running => Status::RUNNING,
            TaskState::Stopped => Status::STOPPED,
        });
        if let Some(e) = &proc.exit {
            r.exit_status = e.code;
            r.exited_at = Some(e.at.clone()).into();
        }
        Ok(r)
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.create_task(&req).map_err(to_ttrpc)?;
        self.inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = if req.exec_id.is_empty() {
            let pid = self.start_task(&req.id).map_err(to_ttrpc)?;
            self.inner.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            pid
        } else {
            self.start_exec(&req.id, &req.exec_id).map_err(to_ttrpc)?
        };
        let mut r = api::StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let mut st = lock(&self.inner.state);
        let pid = st.pid();
        let mut r = api::DeleteResponse::new();
        r.pid = pid;
        if !req.exec_id.is_empty() {
            let t = st.task(&req.id)?;
            let e = t.execs.get(&req.exec_id).ok_or_else(|| {
                status(Code::NOT_FOUND, format!("exec {} not found", req.exec_id))
            })?;
            if e.proc.state == TaskState::Running {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is running", req.exec_id),
                ));
            }
            if let Some(e) = t.execs.remove(&req.exec_id).and_then(|e| e.proc.exit) {
                r.exit_status = e.code;
                r.exited_at = Some(e.at).into();
            }
            return Ok(r);
        }
        let t = st.task(&req.id)?;
        if t.proc.state == TaskState::Running {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {} is running: kill it first", req.id),
            ));
        }
        let exit = st.tasks.remove(&req.id).and_then(|t| t.proc.exit);
        let (code, at) = exit.map_or((137, now()), |e| (e.code, e.at));
        if st.tasks.is_empty() {
            st.end_group();
        } else if let Ok(mut c) = st.client() {
            if let Err(e) = c.remove_container(&req.id) {
                log::warn!("removing {}: {e}", req.id);
            }
        }
        drop(st);
        self.inner.changed.notify_all();
        self.inner.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            }),
        );
        r.exit_status = code;
        r.exited_at = Some(at).into();
        Ok(r)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let mut st = lock(&self.inner.state);
        let pid = st.pid();
        st.task(&req.id)?;
        let mut r = api::PidsResponse::new();
        let mut p = ProcessInfo::new();
        p.pid = pid;
        r.processes.push(p);
        Ok(r)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let mut st = lock(&self.inner.state);
        let only = st.tasks.len() == 1;
        let t = st.task(&req.id)?;
        if !req.exec_id.is_empty() {
            // Execs run to their end inside the agent's request; nothing to signal.
            return Ok(api::Empty::new());
        }
        match t.proc.state {
            TaskState::Stopped => return Ok(api::Empty::new()),
            TaskState::Created => {
                t.proc.state = TaskState::Stopped;
                t.proc.exit = Some(Exit {
                    code: 128 + req.signal,
                    at: now(),
                });
                drop(st);
                self.inner.changed.notify_all();
                return Ok(api::Empty::new());
            }
            TaskState::Running => {}
        }
        let signal =
            i32::try_from(req.signal).map_err(|_| status(Code::INVALID_ARGUMENT, "bad signal"))?;
        let asked = st.client().and_then(|mut c| Ok(c.signal(&req.id, signal)?));
        match asked {
            Ok(_) => Ok(api::Empty::new()),
            // Policies allow a container its stop signal, not SIGKILL; the host can always end
            // the whole group, which for a one-container group is the container's SIGKILL.
            Err(_) if signal == libc::SIGKILL && only => {
                st.end_group();
                Ok(api::Empty::new())
            }
            Err(e) => Err(to_ttrpc(e)),
        }
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        if req.terminal {
            return unimplemented("exec with a terminal");
        }
        let process = req
            .spec
            .as_ref()
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec without a process spec"))
            .and_then(|a| spec::exec_process(&a.value).map_err(to_ttrpc))?;
        let mut st = lock(&self.inner.state);
        let t = st.task(&req.id)?;
        if t.execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        t.execs.insert(
            req.exec_id.clone(),
            Exec {
                proc: Proc {
                    state: TaskState::Created,
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    exit: None,
                },
                process,
            },
        );
        drop(st);
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let mut st = lock(&self.inner.state);
        loop {
            let t = st.task(&req.id)?;
            let proc = if req.exec_id.is_empty() {
                &t.proc
            } else {
                &t.execs
                    .get(&req.exec_id)
                    .ok_or_else(|| {
                        status(Code::NOT_FOUND, format!("exec {} not found", req.exec_id))
                    })?
                    .proc
            };
            if let Some(e) = &proc.exit {
                let mut r = api::WaitResponse::new();
                r.exit_status = e.code;
                r.exited_at = Some(e.at.clone()).into();
                return Ok(r);
            }
            st = self
                .inner
                .changed
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        // Containers get no stdin (the agent gives them none): closing it is already done.
        lock(&self.inner.state).task(&req.id)?;
        Ok(api::Empty::new())
    }

    fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = lock(&self.inner.state).pid();
        r.version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        let mut st = lock(&self.inner.state);
        if !st.tasks.is_empty() {
            return Ok(api::Empty::new());
        }
        st.end_group();
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        unimplemented("Pause")
    }
    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        unimplemented("Resume")
    }
    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        unimplemented("Checkpoint")
    }
    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        unimplemented("ResizePty")
    }
    fn update(&self, _ctx: &TtrpcContext, _req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        unimplemented("Update")
    }
    fn stats(
        &self,
        _ctx: &TtrpcContext,
        _req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        unimplemented("Stats")
    }
}
