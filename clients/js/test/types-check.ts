// Compiled with `tsc --noEmit` by the tests: the README's example must type-check.
import { connect, RoomcastError, type RoomEvent } from "../roomcast.js";

const client = connect(["ws://a/ws", "ws://b/ws"], { getToken: async () => "jwt", minDelay: 200 });
const state: "connecting" | "connected" | "disconnected" | "closed" = client.state;
const offState = client.on("state", (s) => console.log(s, state));
const sub = client.subscribe("show-42", { lastEventId: "1732270000000-3", audience: true });
sub.on("event", ({ id, data }: RoomEvent) => console.log(id, data));
sub.on("gap", ({ after }) => console.log(after));
sub.on("audience", ({ count }) => console.log(count + 1));
sub.once("reactions", ({ counts }) => console.log(counts["👏"]));
const last: string | undefined = sub.lastEventId;
client
  .publish("show-42", { text: "hi" }, { idempotencyKey: "k1" })
  .then((id: string) => console.log(id, last))
  .catch((e: RoomcastError) => console.log(e.code));
offState();
sub.unsubscribe();
client.close();

// Joining a live show: rewind, state, history backwards, keyed publishes.
const late = connect("ws://a/ws").subscribe("auction-7", { rewind: 50, state: true });
late.on("state", ({ values, lastEventId }) => console.log(values["lead"]?.data, lastEventId));
const lead: { id: string; data: unknown } | undefined = late.state["lead"];
late.history({ before: lead?.id, limit: 20 }).then(({ events, more }) => console.log(events[0]?.key, more));
void connect("ws://a/ws").publish("auction-7", { bid: 12 }, { key: "lead" });

// Moderation: edits and deletes of earlier events.
late.on("edit", ({ target, data }) => console.log(target, data));
late.on("delete", ({ target }) => console.log(target));

// Presence: who is in the room.
const watching = connect("ws://a/ws").subscribe("show-42", { presence: true });
watching.on("presence", ({ members, count, truncated, joined, left }) => console.log(members.size, count, truncated, joined[0]?.sub, left));
const who: Map<string, Record<string, unknown>> = watching.members;
console.log(who.get("ann")?.["name"], watching.memberCount, watching.membersTruncated);
