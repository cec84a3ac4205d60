// Splits command-line flags into setting values. `--name value`, `--name=value`; boolean settings
// also take a bare `--name` or `--no-name`.
import { SPECS, SettingsError, type SettingKey } from './settings.js';

const byFlag = new Map<string, SettingKey>(Object.entries(SPECS).map(([k, s]) => [s.flag, k as SettingKey]));

export interface ParsedArgs {
  flags: Partial<Record<SettingKey, unknown>>;
  configFile?: string;
  positionals: string[];
  /** Flags that are not settings (e.g. --all, --markdown), bare ones as true. */
  extra: Record<string, string | true>;
}

export function parseFlags(argv: string[], extraFlags: readonly string[] = []): ParsedArgs {
  const out: ParsedArgs = { flags: {}, positionals: [], extra: {} };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (!a.startsWith('--') || a === '--') { out.positionals.push(...(a === '--' ? argv.slice(i + 1) : [a])); if (a === '--') break; continue; }
    const eq = a.indexOf('=');
    let name = a.slice(2, eq < 0 ? undefined : eq);
    let value: string | undefined = eq < 0 ? undefined : a.slice(eq + 1);
    if (extraFlags.includes(name)) { out.extra[name] = value ?? true; continue; }
    let negated = false;
    if (!byFlag.has(name) && name.startsWith('no-') && byFlag.has(name.slice(3))) { name = name.slice(3); negated = true; }
    if (name === 'config') {
      value ??= argv[++i];
      if (value === undefined) throw new SettingsError('--config needs a file path');
      out.configFile = value;
      continue;
    }
    const key = byFlag.get(name);
    if (!key) throw new SettingsError(`unknown option --${name} (see "pg-steadytext help")`);
    if (SPECS[key].kind === 'bool') {
      if (negated) value = 'false';
      else if (value === undefined) value = argv[i + 1] !== undefined && /^(true|false|on|off|yes|no|1|0)$/i.test(argv[i + 1]) ? argv[++i] : 'true';
    } else if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new SettingsError(`--${name} needs a value`);
    }
    out.flags[key] = value;
  }
  return out;
}
