#!lua
--[[
  restore.lua: install a coupon's counters (at creation, or after they went missing) from state
  the caller computed out of Postgres plus the events still in the stream. Refuses when the stream
  moved on since the caller read it, so a rebuild can never miss an event.

  KEYS[1] meta     hash
  KEYS[2] stock    string
  KEYS[3] holders  hash (gets the completeness marker field '#')
  KEYS[4] claims   hash (likewise)
  KEYS[5] events   stream (created with the consumer group if missing)

  ARGV[1] consumer group name
  ARGV[2] id of the last stream entry the caller saw ('' = stream empty or missing)
  ARGV[3] total      ARGV[4] perUserLimit   ARGV[5] startsAt ms   ARGV[6] endsAt ms or ''
  ARGV[7] stock left
  ARGV[8..] triples: userId, units held now, last claim number

  Returns code
    0 PRESENT       counters already there (another request restored them): nothing written
    1 RESTORED
    2 STREAM_MOVED  new events arrived since the caller's read: read again and retry
]]

local meta, stock, holders, claims, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

if redis.call('HEXISTS', meta, 'perUserLimit') == 1 and redis.call('EXISTS', stock) == 1
  and redis.call('HEXISTS', holders, '#') == 1 and redis.call('HEXISTS', claims, '#') == 1 then return 0 end

local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
local lastId = last[1] and last[1][1] or ''
if lastId ~= ARGV[2] then return 2 end
redis.call('TYPE', holders)

redis.call('DEL', meta, stock, holders, claims)
redis.call('HSET', meta, 'total', ARGV[3], 'perUserLimit', ARGV[4], 'startsAt', ARGV[5], 'endsAt', ARGV[6])
redis.call('SET', stock, ARGV[7])
redis.call('HSET', holders, '#', 1)
redis.call('HSET', claims, '#', 1)
for i = 8, #ARGV, 3 do
  if tonumber(ARGV[i + 1]) > 0 then redis.call('HSET', holders, ARGV[i], ARGV[i + 1]) end
  redis.call('HSET', claims, ARGV[i], ARGV[i + 2])
end

local ok, err = pcall(redis.call, 'XGROUP', 'CREATE', events, ARGV[1], '0', 'MKSTREAM')
if not ok and not string.find(tostring(err), 'BUSYGROUP') then return redis.error_reply(tostring(err)) end
return 1
