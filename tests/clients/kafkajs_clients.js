// kafkajs (pure JavaScript) against Sluice: admin (create topic with
// configs, describe, delete), a producer with acks=all, and a
// two-member consumer group splitting a topic; every
// message is consumed exactly once and the group's committed offsets are
// visible through the admin client.
//
// Usage: node kafkajs_clients.js BOOTSTRAP
//        node kafkajs_clients.js BOOTSTRAP produce-acked TOPIC COUNT TAG
//        node kafkajs_clients.js BOOTSTRAP transactions
//
// transactions: a transactional producer commits one transaction and aborts another across
// the topic's partitions, and commits a third with offsets of a consumer group
// (sendOffsets); a read_committed consumer group sees exactly the committed records, and the
// group's offsets are the ones sent in the committed transaction.
//
// produce-acked: an idempotent kafkajs producer sends COUNT records "TAG-i" to partition 0 of
// TOPIC with acks=all, one send at a time (the cluster test kills the partition's leader
// meanwhile), and prints "ACK <partition> <offset> <value>" for each one acknowledged and
// "FAILED <n>" at the end.
'use strict';

const { Kafka, logLevel } = require('kafkajs');

const bootstrap = process.argv[2];
const N = 600;
const PARTITIONS = 6;
const DEADLINE_MS = 60000;

function fail(msg) {
  console.error(`FAIL: ${msg}`);
  process.exit(1);
}

async function main() {
  const kafka = new Kafka({
    clientId: 'sluice-kafkajs-test',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 8, initialRetryTime: 100 },
  });
  const admin = kafka.admin();
  await admin.connect();
  const topic = 'js-orders';
  const created = await admin.createTopics({
    topics: [{ topic, numPartitions: PARTITIONS, configEntries: [{ name: 'retention.ms', value: '3600000' }] }],
    waitForLeaders: true,
  });
  if (!created) fail('createTopics returned false');
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  if (md.topics[0].partitions.length !== PARTITIONS) fail(`metadata shows ${md.topics[0].partitions.length} partitions`);

  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < N; i++) messages.push({ key: `k${i % 37}`, value: `v${i}`, headers: { seq: `${i}` } });
  for (let i = 0; i < N; i += 100) {
    await producer.send({ topic, acks: -1, messages: messages.slice(i, i + 100) });
  }
  await producer.disconnect();

  const groupId = 'js-group';
  const seen = new Map();
  const consumers = [];
  for (let c = 0; c < 2; c++) {
    const consumer = kafka.consumer({ groupId, sessionTimeout: 10000, heartbeatInterval: 500 });
    await consumer.connect();
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        const v = message.value.toString();
        if (seen.has(v)) fail(`duplicate ${v} (partition ${partition})`);
        if (message.headers.seq.toString() !== v.slice(1)) fail(`header mismatch for ${v}`);
        seen.set(v, c);
      },
    });
    consumers.push(consumer);
  }
  const start = Date.now();
  while (seen.size < N && Date.now() - start < DEADLINE_MS) {
    await new Promise((r) => setTimeout(r, 100));
  }
  if (seen.size !== N) fail(`consumed ${seen.size} of ${N}`);
  // kafkajs commits after each batch; give the last commit a moment.
  await new Promise((r) => setTimeout(r, 1500));
  for (const c of consumers) await c.disconnect();

  const offsets = await admin.fetchOffsets({ groupId, topics: [topic] });
  const committed = offsets[0].partitions.reduce((sum, p) => sum + Number(p.offset), 0);
  if (committed !== N) fail(`committed offsets sum to ${committed}, expected ${N}`);
  const groups = await admin.listGroups();
  if (!groups.groups.some((g) => g.groupId === groupId)) fail('group not listed');
  const deleted = await admin.deleteGroups([groupId]);
  if (deleted[0].errorCode !== 0) fail(`deleteGroups: ${JSON.stringify(deleted)}`);
  const after = await admin.fetchOffsets({ groupId, topics: [topic] });
  if (after[0].partitions.some((p) => p.offset !== '-1')) fail('offsets remain after deleteGroups');

  await admin.deleteTopics({ topics: [topic] });
  await admin.disconnect();
  console.log('kafkajs round trip ok');
}

// Idempotent producer while the test driver restarts the broker: every
// message must be stored exactly once, in order per partition.
async function idempotent() {
  const kafka = new Kafka({
    clientId: 'sluice-kafkajs-idempotent',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 30, initialRetryTime: 100, maxRetryTime: 1000 },
  });
  const topic = 'js-idempotent';
  const total = 6000;
  let slowSends = 0;
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (let i = 0; i < total; i += 50) {
    const messages = [];
    for (let j = i; j < i + 50; j++) messages.push({ key: `k${j % 3}`, value: `${j}` });
    const t0 = Date.now();
    await producer.send({ topic, acks: -1, messages });
    if (Date.now() - t0 > 250) slowSends++; // waited out the restart
    await new Promise((r) => setTimeout(r, 20));
  }
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: 'js-idempotent-check' });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = new Set();
  const lastPerKey = new Map();
  await consumer.run({
    eachMessage: async ({ message }) => {
      const v = Number(message.value.toString());
      const k = message.key.toString();
      if (seen.has(v)) fail(`duplicate ${v}`);
      if (lastPerKey.has(k) && lastPerKey.get(k) >= v) fail(`out of order ${v} after ${lastPerKey.get(k)} for ${k}`);
      lastPerKey.set(k, v);
      seen.add(v);
    },
  });
  const start = Date.now();
  while (seen.size < total && Date.now() - start < DEADLINE_MS) {
    await new Promise((r) => setTimeout(r, 100));
  }
  await consumer.disconnect();
  if (seen.size !== total) fail(`consumed ${seen.size} of ${total}`);
  console.log(`sends that waited out the restart: ${slowSends}`);
  if (slowSends === 0) fail('the restart did not interrupt the producer');
  console.log('kafkajs idempotent ok');
}

// Admin APIs: createPartitions, describeConfigs, alterConfigs,
// deleteTopicRecords.
async function admin() {
  const { ConfigResourceTypes } = require('kafkajs');
  const kafka = new Kafka({
    clientId: 'sluice-kafkajs-admin',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 8, initialRetryTime: 100 },
  });
  const admin = kafka.admin();
  await admin.connect();
  const topic = 'js-admin';
  await admin.createTopics({
    topics: [{ topic, numPartitions: 1, configEntries: [{ name: 'retention.ms', value: '3600000' }] }],
    waitForLeaders: true,
  });

  const describe = async () => {
    const r = await admin.describeConfigs({
      resources: [{ type: ConfigResourceTypes.TOPIC, name: topic }],
      includeSynonyms: false,
    });
    const entries = {};
    for (const e of r.resources[0].configEntries) entries[e.configName] = e;
    return entries;
  };
  let entries = await describe();
  if (entries['retention.ms'].configValue !== '3600000') fail(`retention.ms ${entries['retention.ms'].configValue}`);
  if (entries['retention.ms'].isDefault) fail('retention.ms reported as default');
  if (!entries['segment.bytes'].isDefault) fail('segment.bytes reported as overridden');

  await admin.alterConfigs({
    validateOnly: false,
    resources: [{
      type: ConfigResourceTypes.TOPIC,
      name: topic,
      configEntries: [{ name: 'max.message.bytes', value: '200000' }],
    }],
  });
  entries = await describe();
  if (entries['max.message.bytes'].configValue !== '200000') fail(`max.message.bytes ${entries['max.message.bytes'].configValue}`);
  if (!entries['retention.ms'].isDefault) fail('retention.ms still overridden after alterConfigs');

  await admin.createPartitions({ topicPartitions: [{ topic, count: 3 }] });
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  if (md.topics[0].partitions.length !== 3) fail(`createPartitions: ${md.topics[0].partitions.length} partitions`);
  let refused = false;
  try {
    await admin.createPartitions({ topicPartitions: [{ topic, count: 2 }] });
  } catch (e) {
    refused = true;
  }
  if (!refused) fail('shrinking partitions accepted');

  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < 20; i++) messages.push({ partition: 2, value: `v${i}` });
  await producer.send({ topic, acks: -1, messages });
  await producer.disconnect();
  await admin.deleteTopicRecords({ topic, partitions: [{ partition: 2, offset: '12' }] });
  const offsets = await admin.fetchTopicOffsets(topic);
  const p2 = offsets.find((o) => o.partition === 2);
  if (p2.low !== '12' || p2.high !== '20') fail(`after deleteTopicRecords: low ${p2.low} high ${p2.high}`);

  await admin.deleteTopics({ topics: [topic] });
  await admin.disconnect();
  console.log('kafkajs admin ok');
}

async function produceAcked() {
  const [topic, count, tag] = [process.argv[4], Number(process.argv[5]), process.argv[6]];
  const kafka = new Kafka({
    clientId: 'sluice-kafkajs-acked',
    brokers: bootstrap.split(','),
    logLevel: logLevel.NOTHING,
    retry: { retries: 30, initialRetryTime: 100, maxRetryTime: 1000 },
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  let failed = 0;
  for (let i = 0; i < count; i++) {
    const value = `${tag}-${i}`;
    try {
      const [r] = await producer.send({ topic, acks: -1, messages: [{ value, partition: 0 }] });
      console.log(`ACK ${r.partition} ${r.baseOffset} ${value}`);
    } catch (e) {
      failed += 1;
    }
  }
  console.log(`FAILED ${failed}`);
  await producer.disconnect();
}

async function transactions() {
  const kafka = new Kafka({
    clientId: 'sluice-kafkajs-txn',
    brokers: [bootstrap],
    logLevel: logLevel.NOTHING,
    retry: { retries: 8, initialRetryTime: 100 },
  });
  const topic = 'js-txn';
  const admin = kafka.admin();
  await admin.connect();
  await admin.createTopics({ topics: [{ topic, numPartitions: 4 }], waitForLeaders: true });
  const producer = kafka.producer({
    transactionalId: 'js-txn-1', idempotent: true, maxInFlightRequests: 1,
  });
  await producer.connect();
  const batch = (name) => Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, value: `${name}${i}` }));
  let txn = await producer.transaction();
  await txn.send({ topic, acks: -1, messages: batch('commit') });
  await txn.commit();
  txn = await producer.transaction();
  await txn.send({ topic, acks: -1, messages: batch('abort') });
  await txn.abort();
  txn = await producer.transaction();
  await txn.send({ topic, acks: -1, messages: batch('offsets') });
  await txn.sendOffsets({
    consumerGroupId: 'js-txn-group',
    topics: [{ topic, partitions: [{ partition: 0, offset: '7' }, { partition: 1, offset: '3' }] }],
  });
  await txn.commit();
  await producer.disconnect();

  const consumer = kafka.consumer({ groupId: 'js-txn-reader', readUncommitted: false });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const seen = [];
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`read ${seen.length} of 40 committed records`)), DEADLINE_MS);
    consumer.run({
      eachMessage: async ({ message }) => {
        seen.push(message.value.toString());
        if (seen.length >= 40) {
          // Linger a little: an aborted record arriving late would show up here.
          setTimeout(() => { clearTimeout(timer); resolve(); }, 1500);
        }
      },
    }).catch(reject);
  });
  await consumer.disconnect();
  const want = [...batch('commit'), ...batch('offsets')].map((m) => m.value).sort();
  const got = seen.slice().sort();
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    fail(`read_committed saw ${got.length} records: ${got.filter((v) => !want.includes(v)).slice(0, 5)}`);
  }
  const offsets = await admin.fetchOffsets({ groupId: 'js-txn-group', topics: [topic] });
  const parts = offsets[0].partitions;
  const at = (p) => parts.find((x) => x.partition === p).offset;
  if (at(0) !== '7' || at(1) !== '3') {
    fail(`offsets sent in the transaction are ${JSON.stringify(parts)}`);
  }
  await admin.disconnect();
  console.log('kafkajs transactions ok');
}

const mode = process.argv[3] || 'round-trip';
const modes = { idempotent, admin, 'produce-acked': produceAcked, transactions };
(modes[mode] || main)().catch((e) => fail(e.stack || String(e)));
