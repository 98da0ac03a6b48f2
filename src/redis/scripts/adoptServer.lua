#!lua
--[[
  adoptServer.lua: called once per (re)connect, before any counter is used. Drops every coupon's
  counters when the Redis server is not the one they were last checked against, so each rebuilds from
  Postgres plus the stream (restore-counters.ts) instead of selling units the counters forgot.

  Why: a promoted replica (Sentinel failover) or a server restarted from its AOF/RDB can hold counters
  older than Postgres: issues the consumer had already persisted, whose writes never reached the
  replica or the disk, are missing from `holders` and `stock`. Used as they are, those units would be
  sold a second time. A rebuild counts them again from their rows.

  How a new server is recognised: its run_id (INFO server; new at every start, and different on a
  promoted replica) differs from the one recorded under KEYS[1], which replicated along with the
  counters. Absent = first start on this data (nothing to distrust: counters missing rebuild anyway).

  Script (Redis runs it atomically): the record is compared and replaced and the counters dropped in one
  step, so an instance that reads the new run_id under KEYS[1] knows the drop is done.

  KEYS[1]     string  run_id of the server the counters were last checked against
  KEYS[2..]   the counter keys to drop (meta, stock, holders, claims, revoked, discarded, codes,
              redemptions and expiring of each coupon found by the caller's SCAN: an inherited redemptions hash may
              have forgotten a redemption Postgres holds; idempotency records, streams and statistics
              stay: they are never wrong, and the rebuild only adds what is missing)
  ARGV[1]     this server's run_id
  ARGV[2]     stock-returned channel
  ARGV[3]     'listed' when the caller saw a recorded run_id and listed the keys, '' when it saw none
  ARGV[4..]   coupon ids whose counters are dropped (published, so sold-out markers end everywhere)

  Returns code
    0 SAME     the record names this server: nothing to do
    1 FIRST    no record: this server's run_id recorded, nothing dropped
    2 ADOPTED  another server's record: counters dropped, this server's run_id recorded
    3 RELIST   a record appeared after the caller looked (it listed nothing): look again
]]

local record = redis.call('GET', KEYS[1])
local runId = ARGV[1]
if record == runId then return 0 end
if not record then
  redis.call('SET', KEYS[1], runId)
  return 1
end
if ARGV[3] ~= 'listed' then return 3 end
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('SET', KEYS[1], runId)
for i = 4, #ARGV do redis.call('PUBLISH', ARGV[2], ARGV[i]) end
return 2
