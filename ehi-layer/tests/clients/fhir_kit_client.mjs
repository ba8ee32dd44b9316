// `ehi serve` driven by the third-party JavaScript FHIR client fhir-kit-client.
//
// Usage: node fhir_kit_client.js BASE TOKEN PATIENT_ID CODE EXPECTED_MATCHES
// Prints one JSON line with what it saw; exits non-zero on any failure.
// Run by ehi-layer/tests/serve_clients.rs (npm install fhir-kit-client@2.0.3). The
// package is ESM-only; FHIR_KIT_CLIENT, when set, is the file URL of its entry point
// (so it may be installed anywhere), else it is resolved from this directory.
import assert from 'node:assert';

const { Client } = await import(process.env.FHIR_KIT_CLIENT || 'fhir-kit-client');

async function main() {
  const [base, token, patientId, code, expected] = process.argv.slice(2);
  const client = new Client({
    baseUrl: base,
    customHeaders: { Authorization: `Bearer ${token}` },
  });

  const capability = await client.capabilityStatement();
  assert.strictEqual(capability.fhirVersion, '4.0.1');

  // Search and page with the server's `next` links.
  const ids = [];
  let page = await client.search({
    resourceType: 'Observation',
    searchParams: { code, _count: 6 },
  });
  assert.strictEqual(page.total, Number(expected));
  while (page) {
    for (const entry of page.entry || []) ids.push(entry.resource.id);
    page = await client.nextPage({ bundle: page });
  }
  assert.strictEqual(ids.length, Number(expected));
  assert.strictEqual(new Set(ids).size, ids.length);

  const patient = await client.read({ resourceType: 'Patient', id: patientId });
  assert.strictEqual(patient.id, patientId);

  const created = await client.create({
    resourceType: 'Observation',
    body: {
      resourceType: 'Observation',
      status: 'preliminary',
      code: { coding: [{ system: 'http://loinc.org', code: '2339-0' }] },
      subject: { reference: `Patient/${patientId}` },
    },
  });
  assert.ok(created.id);
  created.status = 'final';
  const updated = await client.update({
    resourceType: 'Observation',
    id: created.id,
    body: created,
    options: { headers: { 'If-Match': 'W/"1"' } },
  });
  assert.strictEqual(updated.meta.versionId, '2');
  const v1 = await client.vread({ resourceType: 'Observation', id: created.id, version: '1' });
  assert.strictEqual(v1.status, 'preliminary');
  const history = await client.history({ resourceType: 'Observation', id: created.id });
  assert.strictEqual(history.total, 2);

  // A stale If-Match is refused with 412 and an OperationOutcome.
  let refused = null;
  try {
    await client.update({
      resourceType: 'Observation',
      id: created.id,
      body: created,
      options: { headers: { 'If-Match': 'W/"1"' } },
    });
  } catch (e) {
    refused = e;
  }
  assert.ok(refused, 'a stale If-Match was accepted');
  assert.strictEqual(refused.response.status, 412);
  assert.strictEqual(refused.response.data.resourceType, 'OperationOutcome');

  console.log(JSON.stringify({ matches: ids.length, created: created.id }));
}

main().catch((e) => {
  console.error(e && e.response ? JSON.stringify(e.response.data) : e);
  process.exit(1);
});
