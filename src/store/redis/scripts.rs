//! The Lua scripts that make each multi-key step atomic in Redis.

/// Appends one event: predecessor, trim, expiry, floor and bucket signal
/// (and, on a cluster, doorbell), atomically, at most once per call.
///
/// KEYS: room stream, mailbox (the bucket's on a cluster, the store's on one
/// Redis), room floor, the call's record (the publish's idempotency key, or
/// else a replay key named by the call's nonce), the room's state hash, the
/// publisher's slow-mode key, and the room's versions hash.
/// ARGV: history, data, room ttl ms, room name, signal stream length, floor
/// ttl ms, record ttl ms, doorbell channel (empty: none), nonce, payload
/// fingerprint (empty for a replay key), state key (empty: none), most
/// state keys, slow-mode interval ms (0: none), operation (`edit`,
/// `delete`, or empty for a publish) and its target ID, the event's name
/// (empty: none) and the socket it skips (empty: none).
/// Returns `{id, 1}` for an event stored by this call (now, or by an earlier
/// send of it whose reply was lost), `{first id, 0}` for a repeated key,
/// `{first id, 2}` for a key used with another payload, `{'', 3}` for a new
/// state key past the room's limit, `{'', 4, ms}` for a publisher that must
/// wait `ms` more under slow mode, `{'', 5}` for an operation whose target
/// the stream does not hold (nothing stored in these cases).
///
/// An operation is appended like a publish (fields `o`: edit or delete, `t`:
/// the target) and applied in the same step. An edit records the target's
/// new data in the versions hash (`"e|<edit ids>|<data>"`), which reads
/// apply. A delete removes the target's entry and its edits' entries from
/// the stream (`XDEL`) and leaves, for each, a tombstone in the versions
/// hash (`"x|<predecessor>"`, or `"o|<predecessor>|<target>"` for an edit):
/// reads put each deleted event back in its place without its data, so the
/// chain of predecessors holds and a deletion never reads as a gap. A state
/// value that was the target follows it.
///
/// A keyed event carries its key in field `k`, and becomes the key's value
/// in the state hash (`"<id> <data>"`), which expires with the stream. A
/// named event carries its name in `n`, and the socket it skips in `s`.
///
/// Every append records `"<id> <nonce> <fingerprint>"` under KEYS[4]. fred sends a call
/// again when the connection drops before the reply (after a Redis restart
/// from an AOF that has the write, say): the resend finds its own nonce and
/// stores nothing. Another call with the same idempotency key has another
/// nonce: a repeat.
///
/// The floor holds the room's last position and the server that wrote it
/// (the first 16 hex digits of `run_id`). A stream with no entry starts
/// strictly above the floor and names it as its predecessor: a reader that
/// was there missed nothing, one below it gets a gap. If the floor is gone
/// too, the room starts at `<now_ms + 1>-<µs within the ms × 1000>`: that
/// virtual clock grows by 1,000 sequence numbers per microsecond, faster
/// than any stream (even one rebuilt the same way a moment earlier) can
/// append, so it is above every ID handed out before; its predecessor is
/// `0-0`, which no reader past the start holds.
///
/// When the floor was written by another server process (Redis restarted
/// from a snapshot or an AOF, or a replica was promoted), acknowledged
/// writes after the floor may be lost with no trace in the keys. The entry
/// then names [`NEW_SERVER`](crate::store::NEW_SERVER) (`0-2`) as its
/// predecessor: a gap to every reader that resumes across it, whenever it
/// comes back, not only to those the feed was following at the time.
pub(super) const APPEND_LUA: &str = r#"
local function older(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local function prev_of(fields)
  for i = 1, #fields, 2 do if fields[i] == 'p' then return fields[i + 1] end end
  return ''
end
local run = string.sub(string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '', 1, 16)
local seen = redis.call('GET', KEYS[4])
if seen then
  local first, nonce, print = string.match(seen, '^(%S+) ?(%S*) ?(%S*)$')
  if nonce == ARGV[9] then return {first, 1} end
  if print ~= '' and ARGV[10] ~= '' and print ~= ARGV[10] then return {first, 2} end
  return {first, 0}
end
local slow = tonumber(ARGV[13]) or 0
if slow > 0 then
  local left = redis.call('PTTL', KEYS[6])
  if left > 0 then return {'', 4, left} end
end
local skey = ARGV[11]
if skey ~= '' and redis.call('HEXISTS', KEYS[5], skey) == 0 and redis.call('HLEN', KEYS[5]) >= tonumber(ARGV[12]) then
  return {'', 3}
end
local fields = {'d', ARGV[2]}
if skey ~= '' then fields = {'k', skey, 'd', ARGV[2]} end
if (ARGV[16] or '') ~= '' then table.insert(fields, 'n'); table.insert(fields, ARGV[16]) end
if (ARGV[17] or '') ~= '' then table.insert(fields, 's'); table.insert(fields, ARGV[17]) end
local op, target, tkey = ARGV[14], ARGV[15], nil
if op ~= '' then
  local t = redis.call('XRANGE', KEYS[1], target, target)
  if not t[1] then return {'', 5} end
  local tfields = t[1][2]
  for i = 1, #tfields, 2 do
    if tfields[i] == 'k' then tkey = tfields[i + 1] elseif tfields[i] == 'o' then return {'', 5} end
  end
  if op == 'delete' then
    local version = redis.call('HGET', KEYS[7], target)
    local edits = version and string.match(version, '^e|([^|]*)|')
    if edits then
      for eid in string.gmatch(edits, '[^,]+') do
        local e = redis.call('XRANGE', KEYS[1], eid, eid)
        if e[1] then
          redis.call('XDEL', KEYS[1], eid)
          redis.call('HSET', KEYS[7], eid, 'o|' .. prev_of(e[1][2]) .. '|' .. target)
        end
      end
    end
    redis.call('XDEL', KEYS[1], target)
    redis.call('HSET', KEYS[7], target, 'x|' .. prev_of(tfields))
    if tkey then
      local current = redis.call('HGET', KEYS[5], tkey)
      if current and string.sub(current, 1, #target + 1) == target .. ' ' then redis.call('HDEL', KEYS[5], tkey) end
    end
    fields = {'o', 'delete', 't', target}
  else
    fields = {'o', 'edit', 't', target, 'd', ARGV[2]}
  end
end
local floor = redis.call('GET', KEYS[3])
local fid, frun
if floor then fid, frun = string.match(floor, '^(%d+%-%d+) ?(%x*)$') end
local moved = frun ~= nil and frun ~= '' and frun ~= run
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local id
if last[1] then
  local prev = last[1][1]
  -- The floor is above the last entry only when the newest events were
  -- deleted: the next one continues from them.
  if fid and older(prev, fid) then prev = fid end
  if moved then prev = '0-2' end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'p', prev, unpack(fields))
else
  local t = redis.call('TIME')
  local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local now = math.floor(us / 1000)
  local ms, seq = now + 1, (us % 1000) * 1000
  local prev = '0-0'
  if fid then
    prev = fid
    if moved then prev = '0-2' end
    local fms, fseq = string.match(fid, '^(%d+)-(%d+)$')
    fms, fseq = tonumber(fms), tonumber(fseq)
    if now > fms then ms, seq = now, 0 else ms, seq = fms, fseq + 1 end
  end
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], string.format('%.0f-%.0f', ms, seq), 'p', prev, unpack(fields))
end
if op == 'edit' then
  local version = redis.call('HGET', KEYS[7], target)
  local ids = (version and string.match(version, '^e|([^|]*)|')) or ''
  if ids ~= '' then ids = ids .. ',' .. id else ids = id end
  redis.call('HSET', KEYS[7], target, 'e|' .. ids .. '|' .. ARGV[2])
  if tkey then
    local current = redis.call('HGET', KEYS[5], tkey)
    if current and string.sub(current, 1, #target + 1) == target .. ' ' then
      redis.call('HSET', KEYS[5], tkey, target .. ' ' .. ARGV[2])
    end
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if skey ~= '' then redis.call('HSET', KEYS[5], skey, id .. ' ' .. ARGV[2]) end
redis.call('PEXPIRE', KEYS[5], ARGV[3])
redis.call('PEXPIRE', KEYS[7], ARGV[3])
redis.call('SET', KEYS[3], id .. ' ' .. run, 'PX', ARGV[6])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if ARGV[8] ~= '' then redis.call('SPUBLISH', ARGV[8], ARGV[4]) end
redis.call('SET', KEYS[4], id .. ' ' .. ARGV[9] .. ' ' .. ARGV[10], 'PX', ARGV[7])
if slow > 0 then redis.call('SET', KEYS[6], '1', 'PX', slow) end
return {id, 1}
"#;

/// A room's current state at one moment: `{end, key, value, key, value,
/// ...}`, where the end is the stream's last ID (else the floor's, else
/// `0-0`) and the values (`"<id> <data>"`) are read only while the stream
/// exists (a room whose history expired or was lost has no current state).
/// KEYS: room stream, room floor, state hash.
pub(super) const STATE_LUA: &str = r#"
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local floor = redis.call('GET', KEYS[2])
local fid = floor and string.match(floor, '^(%d+%-%d+)')
if last[1] then
  local out = {fid or last[1][1]}
  local values = redis.call('HGETALL', KEYS[3])
  for i = 1, #values do out[i + 1] = values[i] end
  return out
end
return {fid or '0-0'}
"#;

/// What moderators changed around some stream entries: the versions (edits
/// and tombstones) a read must apply. KEYS: the versions hash, the room
/// floor. ARGV: the lowest position the read may show (empty: none), then
/// for each entry read, its ID and its predecessor. Returns `{floor, id,
/// version, ...}`: the floor's ID (empty without one), then every entry
/// that was edited, and every tombstone on the
/// chains that lead to the entries (from each predecessor down, stopping at
/// a kept event or the lowest position) and down from the floor (events
/// deleted after the last entry).
pub(super) const VERSIONS_LUA: &str = r#"
local function above(a, b)
  if b == '' then return true end
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  if not am or not bm then return false end
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am > bm or (am == bm and as > bs)
end
local out, seen = {}, {}
local bound = ARGV[1]
local function walk(p)
  local steps = 0
  while p and p ~= '' and not seen[p] and above(p, bound) and steps < 100000 do
    local v = redis.call('HGET', KEYS[1], p)
    if not v then return end
    local kind = string.sub(v, 1, 1)
    if kind ~= 'x' and kind ~= 'o' then return end
    seen[p] = true
    out[#out + 1] = p
    out[#out + 1] = v
    p = string.match(v, '^.|([^|]*)')
    steps = steps + 1
  end
end
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local v = redis.call('HGET', KEYS[1], id)
  if v and string.sub(v, 1, 1) == 'e' and not seen[id] then
    seen[id] = true
    out[#out + 1] = id
    out[#out + 1] = v
  end
  walk(ARGV[i + 1])
end
local floor = redis.call('GET', KEYS[2])
local fid = floor and string.match(floor, '^(%d+%-%d+)')
walk(fid)
table.insert(out, 1, fid or '')
return out
"#;

/// A live subscriber's starting position: the room's end, or a fresh
/// anchor recorded as the room's floor (see [`EventLog::anchor`](crate::store::EventLog::anchor)), on the same
/// virtual clock as a new room's first ID. KEYS: room stream, room floor.
/// ARGV: floor ttl ms.
pub(super) const ANCHOR_LUA: &str = r#"
local floor = redis.call('GET', KEYS[2])
local fid = floor and string.match(floor, '^(%d+%-%d+)')
-- The floor is the room's last position (also when its newest events
-- were deleted from the stream).
if fid then return fid end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then return last[1][1] end
local run = string.sub(string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or '', 1, 16)
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local id = string.format('%.0f-%.0f', math.floor(us / 1000) + 1, (us % 1000) * 1000)
redis.call('SET', KEYS[2], id .. ' ' .. run, 'PX', ARGV[1])
return id
"#;

/// Returns the server's run ID, then each bucket's epoch token, creating
/// the ones that are missing (as they are after Redis lost its data, or
/// just these keys). KEYS: epoch keys. ARGV: a fresh token.
pub(super) const EPOCH_LUA: &str = r#"
local info = redis.call('INFO', 'server')
local out = {string.match(info, 'run_id:(%w+)') or ''}
for i, key in ipairs(KEYS) do
  local v = redis.call('GET', key)
  if not v then
    redis.call('SET', key, ARGV[1])
    v = ARGV[1]
  end
  out[i + 1] = v
end
return out
"#;

/// Bans a subject from a room until a time, dropping bans that ended, and
/// keeps the ban hash until its last ban ends. KEYS: the room's ban hash.
/// ARGV: subject, until (ms since the epoch), now (ms).
pub(super) const BAN_LUA: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local all = redis.call('HGETALL', KEYS[1])
local now, last = tonumber(ARGV[3]), 0
for i = 1, #all, 2 do
  local until_ms = tonumber(all[i + 1]) or 0
  if until_ms <= now then redis.call('HDEL', KEYS[1], all[i]) elseif until_ms > last then last = until_ms end
end
if last > 0 then redis.call('PEXPIREAT', KEYS[1], last) end
return 1
"#;
