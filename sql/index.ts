// pg-steadytext/sql: the steadytext SQL layer. installSql() installs or upgrades the SQL objects over a pg
// connection; startCore() starts the per-database registry and the daemon endpoint, and
// createSteadytextInterceptor() plugs them into startProxy() (pg-steadytext/proxy), as `serve` does.
export { installSql, SqlInstallError, type InstallOptions, type InstallResult } from './install.js';
export { SQL_VERSION } from './version.js';
export { startCore, type CoreOptions } from './core.js';
export type { DatabaseRegistry } from './databases.js';
export type { DaemonHandle } from './daemon/server.js';
export { createSteadytextInterceptor, type SteadytextOptions } from './interceptor.js';
