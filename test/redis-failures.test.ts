// How a Redis failure becomes the client's 503: "refused, nothing changed" (retry is safe) versus
// "outcome unknown" (retry with the same Idempotency-Key). The messages are the ones ioredis and Redis
// produce (checked against a real cluster in test/cluster.test.ts).
import t from 'tap'
import { ReplyError } from 'ioredis'
import * as errors from '../src/errors.js'

const reply = (message: string) => new ReplyError(message)
const code = (err: unknown, ScriptFailed?: errors.ScriptFailure) => (errors.redisFailure(err, ScriptFailed) as Error & { code: string }).code

t.test('a cluster that refused the command before running it: REDIS_RECONFIGURING', async (t) => {
  for (const message of [
    'MOVED 3999 127.0.0.1:6381',
    'ASK 3999 127.0.0.1:6381',
    'TRYAGAIN Multiple keys request during rehashing of slot',
    'CLUSTERDOWN The cluster is down'
  ]) t.equal(code(reply(message)), 'REDIS_RECONFIGURING', message)
  t.equal(code(new Error('Too many Cluster redirections. Last error: ReplyError: CLUSTERDOWN The cluster is down')), 'REDIS_RECONFIGURING', 'ioredis gave up following redirections')
  t.equal(code(new Error('All keys in the pipeline should belong to the same slots allocation group')), 'REDIS_RECONFIGURING', 'an auto-pipeline refused before it was sent (slot map changed)')
  t.equal(code(reply('CLUSTERDOWN Hash slot not served'), errors.CancelScriptFailed), 'REDIS_RECONFIGURING', 'the same for a cancel')
})

t.test('Redis refused the script (nothing ran): the act\'s own *_SCRIPT_FAILED code, as before', async (t) => {
  t.equal(code(reply('OOM command not allowed when used memory > \'maxmemory\'.')), 'ISSUE_SCRIPT_FAILED')
  t.equal(code(reply('READONLY You can\'t write against a read only replica.')), 'ISSUE_SCRIPT_FAILED')
  t.equal(code(reply('NOREPLICAS Not enough good replicas to write.'), errors.CancelScriptFailed), 'CANCEL_SCRIPT_FAILED')
})

t.test('no answer, or the connection closed under a sent command: REDIS_UNAVAILABLE (outcome unknown)', async (t) => {
  t.equal(code(new Error('Command timed out')), 'REDIS_UNAVAILABLE')
  t.equal(code(new Error('Connection is closed.')), 'REDIS_UNAVAILABLE')
  t.match(new errors.RedisUnavailable().message, /may or may not have happened.*same Idempotency-Key/, 'the message says what to do')
  t.match(new errors.RedisReconfiguring().message, /nothing was changed.*Retry/, 'the message says a retry is safe')
  const catalog = new errors.SoldOut(1)
  t.equal(errors.redisFailure(catalog), catalog, 'catalog errors pass through')
})
