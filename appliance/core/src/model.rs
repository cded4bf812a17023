//! The records adapters render and the inputs they parse: plain data, read
//! by the console, REST and CLI and handed back to [`crate::ops`]. Nothing
//! here acts; a [`Principal`] cannot be made outside this crate.

pub use crate::access::audit::AuditRecord;
pub use crate::access::directory::{Directory, GroupMapping};
pub use crate::access::scope::AccessPolicy;
pub use crate::access::tokens::{ApiToken, TokenRequest};
pub use crate::access::{random_token, Principal, Privilege, RoleDef, UserInput, SESSION_IDLE};
pub use crate::alerts::channel::{SmtpSecurity, SnmpNotification, SnmpVersion, SyslogTransport};
pub use crate::alerts::rule::{MetricName, MetricObject};
pub use crate::alerts::{
    Alert, ChannelConfig, ChannelInput, Condition, Delivery, DeliveryState, EventKind, Rule,
    RuleInput, Severity, Subject,
};
pub use crate::backup::archive::{ExportStats, Progress};
pub use crate::backup::as_new::AsNew;
pub use crate::backup::datastores::{DatastoreInput, Location};
pub use crate::backup::policy::{BackupPolicy, PolicyBootVerify};
pub use crate::backup::prune::PruneOptions;
pub use crate::backup::{BackupId, VmUuid};
pub use crate::clock::rfc3339;
pub use crate::ha::failover::{Failover, FailoverState};
pub use crate::ha::physical::{HealthCheck, PhysicalMachine, PhysicalState};
pub use crate::ha::settings::{
    ClusterHa, FailoverMethod, HostHa, HostHaView, HostProbe, Priority, VmHa,
};
pub use crate::ha::HostEvent;
pub use crate::hub::enrollment::EnrollmentToken;
pub use crate::inventory::categories::{Categories, CategoryRule};
pub use crate::inventory::{HostView, Vm};
pub use crate::jobs::Job;
pub use crate::logging::{Log, LogLevel, LogRecord, KEPT_RECORDS as KEPT_LOG_RECORDS};
pub use crate::metrics::archive::{Cf, Timeframe};
pub use crate::metrics::catalog::{Kind as MetricKind, Metric, Unit};
pub use crate::metrics::chargeback::{Rates, Usage as ChargeUsage, VmFacts};
pub use crate::metrics::{Current, Detail, MetricsSettings, MetricsStatus, SeriesSet};
pub use crate::snmp::{
    AuthProtocol, CommunityInput, EngineState, PrivProtocol, SnmpInput, UsmUserInput, ENTERPRISE,
};
pub use crate::sql_export::{SqlExportStatus, SqlState, SqlTargetInput, SqlTls};
