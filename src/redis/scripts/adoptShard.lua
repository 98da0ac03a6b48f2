#!lua flags=allow-cross-slot-keys
--[[
  adoptShard.lua: adoptServer.lua for one primary of a Redis Cluster. Called on that primary's own
  connection (never routed), once per (re)connect or change of the slots it serves, before any counter
  of a coupon it serves is used. Drops the counters of every coupon on this node when the node is not
  the server they were last checked against (a replica promoted after its primary crashed, a primary
  restarted from an older AOF/RDB), so each rebuilds from Postgres plus the stream instead of selling
  units the inherited counters forgot. Coupons on the other primaries are not touched.

  Why one script across slots: the record is compared and replaced and the counters dropped in one
  atomic step, as on one Redis, so an instance that reads this node's run_id in the record knows the
  drop is done. A cluster refuses declared keys of several slots (CROSSSLOT), so only the record is
  declared and the counter keys come in ARGV; `allow-cross-slot-keys` lets the script touch keys of
  any slot this node serves (a key of a slot it does not serve fails the script: the caller lists again).

  KEYS[1]     string  the record: run_id of the server this node's counters were last checked against,
              in the lowest slot the node serves (keys.shardServerRunId)
  ARGV[1]     this server's run_id
  ARGV[2]     stock-returned channel
  ARGV[3]     the record as the caller read it ('' = none): the decision below was made for that record
  ARGV[4]     'keep': record this server without dropping (no record, or a record that came with its slot
              from a primary that is alive and gave the slot away: a slot migration moves keys whole);
              'drop': drop the listed counters, then record this server
  ARGV[5]     n, the number of counter keys that follow
  ARGV[6..5+n]  counter keys to drop (meta, stock, holders, claims, revoked, discarded, codes, redemptions
              of each coupon the caller's SCAN of this node found)
  ARGV[6+n..] coupon ids whose counters are dropped (published, so sold-out markers end everywhere)

  Returns code
    0 SAME     the record names this server: nothing to do
    1 KEPT     recorded this server, nothing dropped
    2 ADOPTED  counters dropped, this server recorded
    3 RELIST   the record is not what the caller read: look again
]]

local record = redis.call('GET', KEYS[1])
local runId = ARGV[1]
if record == runId then return 0 end
if (record or '') ~= ARGV[3] then return 3 end
if ARGV[4] == 'keep' then
  redis.call('SET', KEYS[1], runId)
  return 1
end
local n = tonumber(ARGV[5])
for i = 6, 5 + n do redis.call('DEL', ARGV[i]) end
redis.call('SET', KEYS[1], runId)
for i = 6 + n, #ARGV do redis.call('PUBLISH', ARGV[2], ARGV[i]) end
return 2
