// Versions of the SQL objects. Each migration file in sql/migrations brings the objects to one version;
// steadytext_version() reports the version of the last migration applied in the database.

export interface Migration {
  /** File name without ".sql"; also the id recorded in steadytext_meta. Sorted by its numeric prefix. */
  id: string;
  version: string;
}

export const MIGRATIONS: readonly Migration[] = [
  { id: '001_init', version: '1.0.0' },
  { id: '002_observability', version: '1.1.0' },
  { id: '003_private_cache', version: '1.2.0' },
  { id: '004_handover', version: '1.3.0' },
  { id: '005_inband', version: '1.4.0' },
  { id: '006_inband_wake', version: '1.5.0' },
  { id: '007_inband_session_answers', version: '1.6.0' },
  { id: '008_single_session', version: '1.7.0' },
  { id: '009_inband_cache_answers', version: '1.8.0' },
  { id: '010_inband_standing_wake', version: '1.9.0' },
];

export const SQL_VERSION: string = MIGRATIONS[MIGRATIONS.length - 1].version;
