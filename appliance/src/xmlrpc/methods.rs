//! The XML-RPC methods: each is a REST route with its arguments mapped to
//! the route's path, query and body, so a method answers exactly what the
//! route answers (the same fields, checks and audit records).

/// How one positional argument reaches the REST request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// A path segment standing for `{name}` (a string, or an integer).
    Path(&'static str),
    /// An object as `kind:id` (`vm:UUID`, `host:ID`), standing for
    /// `{object}`: `vms/UUID` or `hosts/ID`.
    Object,
    /// A string sent as the query parameter of this name.
    Query(&'static str),
    /// A struct of strings, numbers and booleans sent as query parameters.
    Filter,
    /// A string sent as this field of the JSON body.
    Field(&'static str),
    /// A struct sent as the JSON body.
    Body,
}

impl Arg {
    /// The XML-RPC type it is given as (for `system.methodSignature`).
    pub fn kind(self) -> &'static str {
        match self {
            Arg::Filter | Arg::Body => "struct",
            Arg::Path(_) | Arg::Object | Arg::Query(_) | Arg::Field(_) => "string",
        }
    }
}

pub struct Param {
    pub name: &'static str,
    pub arg: Arg,
    pub required: bool,
}

const fn required(name: &'static str, arg: Arg) -> Param {
    Param {
        name,
        arg,
        required: true,
    }
}

const fn optional(name: &'static str, arg: Arg) -> Param {
    Param {
        name,
        arg,
        required: false,
    }
}

/// What a method calls.
pub enum Target {
    /// A REST route: method and path pattern below `/api/v1`.
    Rest(&'static str, &'static str),
    /// Answered by the XML-RPC adapter itself.
    Local,
}

pub struct Method {
    pub name: &'static str,
    pub target: Target,
    pub params: &'static [Param],
    /// The XML-RPC type of the answer.
    pub returns: &'static str,
    pub help: &'static str,
}

pub static METHODS: &[Method] = &[
    Method {
        name: "system.listMethods",
        target: Target::Local,
        params: &[],
        returns: "array",
        help: "The names of every method.",
    },
    Method {
        name: "system.methodHelp",
        target: Target::Local,
        params: &[required("name", Arg::Query("name"))],
        returns: "string",
        help: "What a method does, its arguments and the REST route it mirrors.",
    },
    Method {
        name: "system.methodSignature",
        target: Target::Local,
        params: &[required("name", Arg::Query("name"))],
        returns: "array",
        help: "A method's signatures: each the return type, then the argument types.",
    },
    Method {
        name: "lifeboat.version",
        target: Target::Local,
        params: &[],
        returns: "struct",
        help: "The controller's version and the REST API it mirrors: {version, api}.",
    },
    Method {
        name: "host.list",
        target: Target::Rest("GET", "/hosts"),
        params: &[],
        returns: "array",
        help: "Every host the caller may see.",
    },
    Method {
        name: "host.get",
        target: Target::Rest("GET", "/hosts/{id}"),
        params: &[required("id", Arg::Path("id"))],
        returns: "struct",
        help: "One host by its id.",
    },
    Method {
        name: "vm.list",
        target: Target::Rest("GET", "/vms"),
        params: &[optional("filter", Arg::Filter)],
        returns: "array",
        help: "The VMs the caller may see: filter keys as GET /api/v1/vms's query (name, host, \
               state, sort, order); with page or per_page, a page {total, page, per_page, items}.",
    },
    Method {
        name: "vm.get",
        target: Target::Rest("GET", "/vms/{id}"),
        params: &[required("id", Arg::Path("id"))],
        returns: "struct",
        help: "One VM by its UUID.",
    },
    Method {
        name: "vm.power",
        target: Target::Rest("POST", "/vms/{id}/power"),
        params: &[
            required("id", Arg::Path("id")),
            required("action", Arg::Field("action")),
        ],
        returns: "struct",
        help: "Starts a power job: action is start, shutdown, poweroff, reboot, pause or \
               resume. Answers {job: its id} (job.get follows it).",
    },
    Method {
        name: "vm.backup",
        target: Target::Rest("POST", "/vms/{id}/backups"),
        params: &[
            required("id", Arg::Path("id")),
            optional("options", Arg::Body),
        ],
        returns: "struct",
        help: "Starts a backup job: options as POST /api/v1/vms/{id}/backups's body (mode: \
               full or incremental, datastore ...). Answers {job: its id} (job.get follows it).",
    },
    Method {
        name: "backup.list",
        target: Target::Rest("GET", "/vms/{id}/backups"),
        params: &[required("vm_id", Arg::Path("id"))],
        returns: "array",
        help: "A VM's backups.",
    },
    Method {
        name: "backup.restore",
        target: Target::Rest("POST", "/backups/{ref}/restore"),
        params: &[
            required("backup_id", Arg::Path("ref")),
            optional("options", Arg::Body),
        ],
        returns: "struct",
        help: "Starts a restore job: options as POST /api/v1/backups/{ref}/restore's body \
               (host, as_new ...). Answers {job: its id} (job.get follows it).",
    },
    Method {
        name: "backup.verify",
        target: Target::Rest("POST", "/backups/{ref}/verify"),
        params: &[required("backup_id", Arg::Path("ref"))],
        returns: "struct",
        help: "Starts a verification job of a backup. Answers {job: its id} (job.get follows it).",
    },
    Method {
        name: "backup.bootVerify",
        target: Target::Rest("POST", "/backups/{ref}/boot-verify"),
        params: &[
            required("backup_id", Arg::Path("ref")),
            optional("options", Arg::Body),
        ],
        returns: "struct",
        help: "Starts a boot verification: the backup restored into a sandbox VM without \
               network, booted, and judged by its sign of life; options as POST \
               /api/v1/backups/{ref}/boot-verify's body (host, signal, timeout_secs). \
               Answers {job: its id}; the outcome is the backup's boot_verify.",
    },
    Method {
        name: "job.get",
        target: Target::Rest("GET", "/jobs/{id}"),
        params: &[required("id", Arg::Path("id"))],
        returns: "struct",
        help: "One job, with its progress.",
    },
    Method {
        name: "job.list",
        target: Target::Rest("GET", "/jobs"),
        params: &[optional("filter", Arg::Filter)],
        returns: "array",
        help: "The newest 200 jobs: filter keys as GET /api/v1/jobs's query (vm: a UUID).",
    },
    Method {
        name: "event.list",
        target: Target::Rest("GET", "/ha/events"),
        params: &[optional("filter", Arg::Filter)],
        returns: "array",
        help: "The newest 500 HA events (host states, fences, failovers): filter keys as GET \
               /api/v1/ha/events's query (source).",
    },
    Method {
        name: "alert.list",
        target: Target::Rest("GET", "/alerts"),
        params: &[optional("filter", Arg::Filter)],
        returns: "array",
        help: "The alert history, newest first: filter keys as GET /api/v1/alerts's query \
               (event, severity, object, limit).",
    },
    Method {
        name: "metrics.get",
        target: Target::Rest("GET", "/{object}/metrics"),
        params: &[
            required("object", Arg::Object),
            required("metric", Arg::Query("metric")),
            required("timeframe", Arg::Query("timeframe")),
            optional("cf", Arg::Query("cf")),
        ],
        returns: "struct",
        help: "A host's or VM's series: object is host:ID or vm:UUID, metric as the REST \
               API names it (cpu, memory_used, disk_read ...), timeframe hour, day, week, month or \
               year, cf avg (default) or max.",
    },
];

pub fn find(name: &str) -> Option<&'static Method> {
    METHODS.iter().find(|m| m.name == name)
}

impl Method {
    /// Its signatures for `system.methodSignature`: one per number of
    /// optional arguments given.
    pub fn signatures(&self) -> Vec<Vec<&'static str>> {
        let least = self.params.iter().filter(|p| p.required).count();
        (least..=self.params.len())
            .map(|n| {
                std::iter::once(self.returns)
                    .chain(self.params[..n].iter().map(|p| p.arg.kind()))
                    .collect()
            })
            .collect()
    }

    /// Its help with its arguments and the REST route it mirrors.
    pub fn full_help(&self) -> String {
        let args: Vec<String> = self
            .params
            .iter()
            .map(|p| {
                let kind = p.arg.kind();
                if p.required {
                    format!("{}: {kind}", p.name)
                } else {
                    format!("[{}: {kind}]", p.name)
                }
            })
            .collect();
        let mirrors = match self.target {
            Target::Rest(method, path) => format!(" Mirrors {method} /api/v1{path}."),
            Target::Local => String::new(),
        };
        format!(
            "{}({}) -> {}. {}{mirrors}",
            self.name,
            args.join(", "),
            self.returns,
            self.help
        )
    }
}
