"""The job store's Lua scripts: every write to a job's record and its indexes is one of these.

Each runs atomically in Redis, so a status change, its index entries, its task message, its
webhook delivery and its completion notice are written together or not at all. The scripts
take every key name and prefix they touch as arguments (from ``shared.keys``); the argument
layouts are built in one place, ``shared.script_calls``.

Every script starts with a ``#!lua`` line: Redis then refuses a write script as a whole when it
is out of memory (``maxmemory`` with ``noeviction``), instead of failing it half-way.
"""

from __future__ import annotations

__all__ = [
    "CREATE",
    "CREATE_KEYS",
    "CREATE_ARGS",
    "DELETE",
    "DROP_STALE",
    "MESSAGES",
    "RECORDS",
    "REQUEST_CANCEL",
    "STATUSES",
    "TAKE",
    "TRANSITION",
    "TRANSITION_ARGS",
    "TRANSITION_KEYS",
]

# Jobs created in one call, each all or nothing (caps counted as the jobs before it are added).
# Global ARGV: 1 now (ms), 2 record TTL (s), 3 idempotency TTL (s), 4 most queued jobs of one
# client (0: no cap), 5 most queued jobs of one model (0: no cap), 6 status index prefix,
# 7 client index prefix, 8 all-jobs index, 9 deadlines.
# Per job, CREATE_KEYS keys: job hash, queue list, idempotency key ('' none), the model's
# queued index, the model's doorbell; and CREATE_ARGS arguments: id, spec, state, client
# ('' none), model, message tag, message, deadline (epoch s, '' none), idempotency value.
# Returns, per job: 0 when created; the idempotency key's value when it already names a job
# (nothing written); {cap name, current count} when a cap refuses it (nothing written).
CREATE_KEYS = 5
CREATE_ARGS = 9
CREATE = """#!lua
local now, ttl, idem_ttl = ARGV[1], ARGV[2], ARGV[3]
local cap_client, cap_model = tonumber(ARGV[4]), tonumber(ARGV[5])
local sx, cx, all, deadlines = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local out = {}
for i = 0, #KEYS / 5 - 1 do
  local k = i * 5
  local job, list, idem, waiting = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local a = 9 + i * 9
  local id, spec, state, client = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local model, tag, message, deadline = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local own = cx .. client .. ':'
  local result = 0
  local earlier = idem ~= '' and redis.call('GET', idem)
  if earlier then
    result = earlier
  elseif cap_model > 0 and redis.call('ZCARD', waiting) >= cap_model then
    result = {'queue_depth', redis.call('ZCARD', waiting)}
  elseif client ~= '' and cap_client > 0 and redis.call('ZCARD', own .. 'queued') >= cap_client then
    result = {'queued_per_client', redis.call('ZCARD', own .. 'queued')}
  else
    if idem ~= '' then redis.call('SET', idem, ARGV[a + 9], 'EX', idem_ttl) end
    redis.call('HSET', job, 'status', 'queued', 'spec', spec, 'state', state, 'run', '',
      'msg', tag, 'model', model, 'deadline', deadline)
    if client ~= '' then
      redis.call('HSET', job, 'client', client)
      redis.call('ZADD', own .. 'all', now, id)
      redis.call('ZADD', own .. 'queued', now, id)
    end
    redis.call('EXPIRE', job, ttl)
    redis.call('ZADD', waiting, now, id)
    redis.call('ZADD', all, now, id)
    redis.call('ZADD', sx .. 'queued', now, id)
    if deadline ~= '' then redis.call('ZADD', deadlines, deadline, id) end
    redis.call('LPUSH', list, message)
    if redis.call('LLEN', KEYS[k + 5]) == 0 then redis.call('LPUSH', KEYS[k + 5], '1') end
  end
  out[i + 1] = result
end
return out
"""

# Status changes, many in one call (a worker writes every job one engine step finished at
# once). Each is applied only if the job is in one of the allowed statuses and, when given,
# its run token and message tag are the expected ones: two writers (a worker finishing, a
# client cancelling, the janitor re-queueing) can never both win.
# Global ARGV: 1 now (ms), 2 record TTL (s), 3 status index prefix, 4 client index prefix,
# 5 model queued-index prefix, 6 deadlines, 7 dead letters, 8 done channel, 9 webhook queue,
# 10 kombu's unacked hash, 11 kombu's unacked index, 12 worker ledger prefix, 13 worker cancels
# prefix.
# Per change, TRANSITION_KEYS keys: job hash, queue list ('' none), webhook delivery hash
# ('' none), the queue's doorbell ('' none); and TRANSITION_ARGS arguments:
#   1 job id; 2 new status ('' none: only release the message); 3 new state ('' keep);
#   4 allowed current statuses (space-separated); 5 expected run token ('' any);
#   6 new run token ('' keep); 7 new owner ('' keep); 8 expected message tag ('' any);
#   9 new message tag ('' keep); 10 task message to push ('' none);
#   11 deadline (epoch s; '' keep the stored one, '-' none); 12 dead letter ('1' add, '' remove);
#   13 webhook delivery spec ('' none; it records the job's previous delivery as 'after', and
#      becomes the job's 'hook'); 14 its task message;
#   15 a message tag to release from kombu's unacked hash ('' none; done whatever the outcome);
#   16 refuse if the expected message was taken by a consumer after this time (ms; '' no check);
#   17 a worker's heartbeat key guarding the change ('' no check): '-key' refuse while it
#      exists (the heartbeat of a worker the janitor thinks gone, so that no re-queue lands
#      once the worker has announced itself again); '+key' refuse unless it exists (a claim:
#      a worker whose heartbeat lapsed claims nothing until it has announced itself again,
#      and the message it took stays taken: 15 is not released).
# Returns, per change: 1 applied (or already applied: the same status and state are stored);
# '' when the job does not exist; 'held' when refused by 16; 'alive' / 'cut_off' when refused
# by 17; else the current status.
TRANSITION_KEYS = 4
TRANSITION_ARGS = 17
TRANSITION = """#!lua
local now, ttl, sx, cx, mq = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local deadlines, dead, done_channel, hook_queue = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local unacked, unacked_index, ledger, cancels = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local terminal = {succeeded = true, failed = true, cancelled = true, expired = true}
local out, done = {}, {}
for i = 0, #KEYS / 4 - 1 do
  local k = i * 4
  local job, list, delivery, bell = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local a = 13 + i * 17
  local id, status, state, allowed = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local want_run, run, owner = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7]
  local want_tag, tag, message, deadline = ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11]
  local release, cutoff, guard = ARGV[a + 15], ARGV[a + 16], ARGV[a + 17]
  local guard_mode, guard_key = string.sub(guard, 1, 1), string.sub(guard, 2)
  if guard_mode == '+' and redis.call('EXISTS', guard_key) == 0 then
    out[i + 1] = 'cut_off'
  else
    if release ~= '' then
      redis.call('HDEL', unacked, release)
      redis.call('ZREM', unacked_index, release)
    end
    local current = redis.call('HGET', job, 'status')
    local result
    if status == '' then
      result = 1
    elseif not current then
      result = ''
    elseif not string.find(' ' .. allowed .. ' ', ' ' .. current .. ' ', 1, true) then
      if current == status and state ~= '' and redis.call('HGET', job, 'state') == state then
        result = 1
      else
        result = current
      end
    elseif want_run ~= '' and redis.call('HGET', job, 'run') ~= want_run then
      result = current
    elseif want_tag ~= '' and redis.call('HGET', job, 'msg') ~= want_tag then
      result = current
    elseif cutoff ~= '' and
        tonumber(redis.call('ZSCORE', unacked_index, want_tag) or '0') * 1000 >
          tonumber(cutoff) then
      result = 'held'
    elseif guard_mode == '-' and redis.call('EXISTS', guard_key) == 1 then
      result = 'alive'
    else
      local f = redis.call('HMGET', job, 'owner', 'client', 'model', 'msg', 'run')
      local old_owner, client, model, old_tag = f[1], f[2], f[3], f[4]
      redis.call('HSET', job, 'status', status)
      if state ~= '' then redis.call('HSET', job, 'state', state) end
      if run ~= '' then redis.call('HSET', job, 'run', run) else run = f[5] end
      if owner ~= '' then redis.call('HSET', job, 'owner', owner) else owner = old_owner end
      if status ~= 'running' then redis.call('HDEL', job, 'cancel') end
      redis.call('EXPIRE', job, ttl)
      redis.call('ZREM', sx .. current, id)
      redis.call('ZADD', sx .. status, now, id)
      if client then
        redis.call('ZREM', cx .. client .. ':' .. current, id)
        redis.call('ZADD', cx .. client .. ':' .. status, now, id)
      end
      if model then
        if current == 'queued' then redis.call('ZREM', mq .. model, id) end
        if status == 'queued' then redis.call('ZADD', mq .. model, now, id) end
      end
      if deadline == '-' then deadline = '' end
      if deadline ~= '' or ARGV[a + 11] == '-' then
        redis.call('HSET', job, 'deadline', deadline)
      end
      redis.call('ZREM', deadlines, id)
      if status == 'queued' then
        local due = redis.call('HGET', job, 'deadline')
        if due and due ~= '' then redis.call('ZADD', deadlines, due, id) end
      end
      if ARGV[a + 12] == '1' then
        redis.call('ZADD', dead, now, id)
      else
        redis.call('ZREM', dead, id)
      end
      if current == 'running' and old_owner then
        redis.call('HDEL', ledger .. old_owner, id)
        redis.call('SREM', cancels .. old_owner, id)
      end
      if status == 'running' and owner then redis.call('HSET', ledger .. owner, id, run) end
      if tag ~= '' then
        if old_tag and old_tag ~= tag and old_tag ~= release then
          redis.call('HDEL', unacked, old_tag)
          redis.call('ZREM', unacked_index, old_tag)
        end
        redis.call('HSET', job, 'msg', tag)
      end
      if message ~= '' then
        redis.call('LPUSH', list, message)
        if redis.call('LLEN', bell) == 0 then redis.call('LPUSH', bell, '1') end
      end
      if terminal[status] then done[#done + 1] = id end
      if ARGV[a + 13] ~= '' then
        -- Deliveries of one job go out in order: each waits for its predecessor's first
        -- attempt.
        local previous = redis.call('HGET', job, 'hook')
        redis.call('HSET', delivery, 'spec', ARGV[a + 13], 'attempts', 0, 'state', 'pending')
        if previous then redis.call('HSET', delivery, 'after', previous) end
        redis.call('HSET', job, 'hook', delivery)
        redis.call('EXPIRE', delivery, ttl)
        redis.call('LPUSH', hook_queue, ARGV[a + 14])
      end
      result = 1
    end
    out[i + 1] = result
  end
end
if #done > 0 then redis.call('PUBLISH', done_channel, table.concat(done, ' ')) end
return out
"""

# KEYS: 1 job hash, 2 cancel channel. ARGV: 1 job id, 2 worker cancels prefix. A running job
# gets its cancel flag, its worker's cancel set gets it, and the workers are told; returns
# the current status (false when the job does not exist).
REQUEST_CANCEL = """#!lua
local current = redis.call('HGET', KEYS[1], 'status')
if current == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then redis.call('SADD', ARGV[2] .. owner, ARGV[1]) end
  redis.call('PUBLISH', KEYS[2], ARGV[1])
end
return current
"""

# KEYS: 1 job hash, 2 all-jobs index, 3 dead letters. ARGV: 1 job id, 2 status index prefix,
# 3 client index prefix. Deletes a finished job; returns the current status (false when the
# job does not exist).
DELETE = """#!lua
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return false end
if current == 'queued' or current == 'running' then return current end
local client = redis.call('HGET', KEYS[1], 'client')
if client then
  local own = ARGV[3] .. client .. ':'
  redis.call('ZREM', own .. 'all', ARGV[1])
  redis.call('ZREM', own .. current, ARGV[1])
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', ARGV[2] .. current, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
"""

# The task id (the delivery tag structq gives it) of a message, without decoding the JSON: the
# id is the first header, and kombu keeps it when it puts a message back.
_TAG_OF = """
local function tag_of(message)
  local tag = string.match(message, '"delivery_tag": "([^"]*)"')
  if tag then return tag end
  local ok, decoded = pcall(cjson.decode, message)
  if ok and type(decoded) == 'table' and type(decoded.properties) == 'table' then
    return tostring(decoded.properties.delivery_tag or '')
  end
  return ''
end
"""

# KEYS: a model's queue lists. ARGV: 1 job key prefix. Removes the messages of jobs that are
# no longer queued (cancelled, purged, expired) or whose current message is another one:
# workers would only skip them, and they would inflate the queue length an autoscaler reads.
# Returns how many it removed.
DROP_STALE = (
    "#!lua"
    + _TAG_OF
    + """
local removed = 0
for _, list in ipairs(KEYS) do
  for _, message in ipairs(redis.call('LRANGE', list, 0, -1)) do
    local tag = tag_of(message)
    local job_id = string.match(tag, '^([^~]+)') or tag
    local f = redis.call('HMGET', ARGV[1] .. job_id, 'status', 'msg')
    if tag ~= '' and (f[1] ~= 'queued' or f[2] ~= tag) then
      removed = removed + redis.call('LREM', list, 1, message)
    end
  end
end
return removed
"""
)

# A consistent view of where the job messages are, for the janitor's reconciliation.
# KEYS: queue lists, then kombu's unacked index (last). Returns {tags of every message in
# the lists, {tag, taken at (s), ...} of every message taken and not acknowledged}.
MESSAGES = (
    "#!lua"
    + _TAG_OF
    + """
local queued = {}
for k = 1, #KEYS - 1 do
  for _, message in ipairs(redis.call('LRANGE', KEYS[k], 0, -1)) do
    queued[#queued + 1] = tag_of(message)
  end
end
return {queued, redis.call('ZRANGE', KEYS[#KEYS], 0, -1, 'WITHSCORES')}
"""
)

# A worker takes up to ARGV[1] job messages, highest priority first, registering each as kombu
# does a message its consumer takes (unacknowledged hash and index, restored to its queue after
# the visibility timeout unless acknowledged), and reads each one's job in the same step.
# KEYS: the model's queue lists (highest priority first), kombu's unacked hash, its unacked
# index, the model's doorbell. ARGV: 1 most messages, 2 now (epoch s), 3 the queue's name (the
# routing key kombu restores a message by), 4 job key prefix.
# Returns {tag, status, spec, state, current tag} per message taken. Rings the doorbell again
# when messages are left, for another worker.
TAKE = (
    "#!lua"
    + _TAG_OF
    + """
local n, nl = tonumber(ARGV[1]), #KEYS - 3
local unacked, index, bell = KEYS[nl + 1], KEYS[nl + 2], KEYS[nl + 3]
local suffix = ', "", ' .. cjson.encode(ARGV[3]) .. ']'
local out = {}
for k = 1, nl do
  if #out >= n then break end
  local got = redis.call('RPOP', KEYS[k], n - #out)
  if got then
    for _, message in ipairs(got) do
      local tag = tag_of(message)
      redis.call('ZADD', index, ARGV[2], tag)
      redis.call('HSET', unacked, tag, '[' .. message .. suffix)
      local job_id = string.match(tag, '^([^~]+)') or tag
      local f = redis.call('HMGET', ARGV[4] .. job_id, 'status', 'spec', 'state', 'msg')
      out[#out + 1] = {tag, f[1], f[2], f[3], f[4]}
    end
  end
end
for k = 1, nl do
  if redis.call('LLEN', KEYS[k]) > 0 then
    if redis.call('LLEN', bell) == 0 then redis.call('LPUSH', bell, '1') end
    break
  end
end
return out
"""
)

# Reads of many jobs in one call, far cheaper for the client than a pipeline of one command
# per job. ARGV: 1 job key prefix, 2 client ('' any), then job ids. Each job's status, or false
# when it does not exist or (with a client) belongs to another client.
STATUSES = """#!lua
local out = {}
for i = 3, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. ARGV[i], 'status', 'client')
  if f[1] and (ARGV[2] == '' or f[2] == ARGV[2]) then out[i - 2] = f[1] else out[i - 2] = false end
end
return out
"""

# ARGV: 1 job key prefix, 2 webhook attempts key prefix, then job ids. Each job's {spec,
# state, webhook attempts...}, or false when it does not exist.
RECORDS = """#!lua
local out = {}
for i = 3, #ARGV do
  local f = redis.call('HMGET', ARGV[1] .. ARGV[i], 'spec', 'state')
  if f[1] and f[2] then
    local row = {f[1], f[2]}
    for _, hook in ipairs(redis.call('LRANGE', ARGV[2] .. ARGV[i], 0, -1)) do
      row[#row + 1] = hook
    end
    out[i - 2] = row
  else
    out[i - 2] = false
  end
end
return out
"""
