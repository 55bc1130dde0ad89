// claude-net dashboard. Plain JavaScript, no libraries. Every read and change goes through the
// hub's HTTP API with the session cookie (and the CSRF token on changes), so it meets the same
// authorization and audit as any client. Text from the hub is always set as textContent, never
// parsed as HTML: an agent's command or message cannot become markup here.
"use strict";

const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const PAGE = document.body.dataset.page;
const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function say(text, isError) {
  const status = $("#status");
  if (!status) return;
  status.textContent = text;
  status.classList.toggle("error", !!isError);
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (method !== "GET") { headers["Content-Type"] = "application/json"; headers["X-CSRF-Token"] = CSRF; }
  const response = await fetch(path, { method, headers, credentials: "same-origin", cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body) });
  let data;
  try { data = await response.json(); } catch (e) { data = { ok: false, error: `HTTP ${response.status}` }; }
  if (response.status === 401) { window.location.assign("/ui/signin"); throw new Error("signed out"); }
  data.status = response.status;
  return data;
}

// a change: say what happened in the status line, in the API's own words when it refused
async function act(label, method, path, body) {
  say(`${label}…`);
  try {
    const data = await api(method, path, body);
    if (data.ok) say(`${label}: done.`);
    else if (data.pending) say(`${label}: waiting for approval. ${data.error || ""}`);
    else say(`${label}: refused (${data.code || data.status}): ${data.error}`, true);
    return data;
  } catch (e) {
    say(`${label}: ${e.message}`, true);
    return { ok: false };
  }
}

const confirmDialog = $("#confirm");
function confirmAction(title, text, okLabel) {
  return new Promise((resolve) => {
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    $("#confirm-ok").textContent = okLabel;
    confirmDialog.returnValue = "";
    confirmDialog.addEventListener("close", () => resolve(confirmDialog.returnValue === "ok"), { once: true });
    confirmDialog.showModal();
    $("#confirm-ok").focus();
  });
}

function badge(word, prefix) { return el("span", { class: `badge ${prefix}-${word}` }, word); }
function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, "") : "—"; }
function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
function bytes(n) {
  if (n === undefined || n === null) return "—";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function showUnavailable(map) {
  const box = $("#unavailable");
  if (!box) return;
  const entries = Object.entries(map || {});
  box.hidden = !entries.length;
  box.replaceChildren(...entries.map(([backend, why]) => el("p", {}, `Backend ${backend} is unavailable: ${why}`)));
}

// One EventSource per page on the activity stream; callers filter what they need.
function live(query, onRow) {
  const indicator = $("#live");
  const source = new EventSource(`/api/activity/stream${query ? "?" + query : ""}`);
  source.onopen = () => { if (indicator) { indicator.textContent = "live"; indicator.className = "live on"; } };
  source.onerror = () => { if (indicator) { indicator.textContent = "reconnecting…"; indicator.className = "live off"; } };
  source.onmessage = (message) => { try { onRow(JSON.parse(message.data)); } catch (e) { /* a malformed row is skipped */ } };
  window.addEventListener("pagehide", () => source.close());
  return source;
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

// ---- machines -------------------------------------------------------------------------------
async function machinesPage() {
  const body = $("#machines tbody");
  async function load() {
    const data = await api("GET", "/api/machines");
    if (!data.ok) { say(`Could not load machines: ${data.error}`, true); return; }
    showUnavailable(data.unavailable);
    body.replaceChildren(...data.machines.map((m) => el("tr", { "data-node": m.name },
      el("th", { scope: "row" }, m.name),
      el("td", {}, badge(m.state, "s")),
      el("td", {}, m.backend),
      el("td", { title: m.lastSeen || "" }, ago(m.lastSeen)),
      el("td", {}, String(m.unread)),
      el("td", {}, m.info && m.info.memoryBytes ? bytes(m.info.memoryBytes) : "—"),
      el("td", {}, m.info && m.info.processes !== undefined ? String(m.info.processes) : "—"))));
    if (!data.machines.length) body.replaceChildren(el("tr", {}, el("td", { colspan: 7 }, "No nodes yet.")));
  }
  await load();
  const reload = debounce(load, 500);
  live("", reload);
  setInterval(load, 15000);
}

// ---- activity -------------------------------------------------------------------------------
async function activityPage() {
  const form = $("#filters");
  const body = $("#activity tbody");
  const older = $("#older");
  const rows = new Map();
  let next = null;
  let source = null;

  function params() {
    const p = new URLSearchParams();
    for (const key of ["from", "target", "type", "result", "q"]) {
      const value = form.elements[key].value.trim();
      if (value) p.set(key, value);
    }
    return p;
  }
  function listParams(before) {
    const p = params();
    p.set("hours", form.elements.hours.value);
    p.set("limit", "50");
    const until = form.elements.before.value;
    if (before !== null && before !== undefined) p.set("before", String(before));
    else if (until) p.set("before", until.length === 16 ? `${until}:00Z` : `${until}Z`);
    return p;
  }
  function matchesSearch(row) {
    const q = form.elements.q.value.trim().toLowerCase();
    return !q || (row.detail || "").toLowerCase().includes(q);
  }
  function renderRow(row) {
    const tr = el("tr", { tabindex: 0, "data-id": row.id, "aria-label": `details of row ${row.id}` },
      el("td", {}, when(row.time)),
      el("td", {}, row.from || "—"),
      el("td", {}, row.type),
      el("td", {}, row.target || "—"),
      el("td", {}, badge(row.result, "r")),
      el("td", { class: "wide" }, row.via || "—"),
      el("td", { class: "detail" }, row.detail));
    const open = () => showDetails(rows.get(row.id) || row);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); open(); } });
    tr.hidden = !matchesSearch(row);
    return tr;
  }
  function count() { $("#shown").textContent = String(body.querySelectorAll("tr:not([hidden])").length); }
  function add(row, { prepend }) {
    const existing = body.querySelector(`tr[data-id="${row.id}"]`);
    rows.set(row.id, row);
    const tr = renderRow(row);
    if (existing) existing.replaceWith(tr);
    else if (prepend) { tr.classList.add("fresh"); body.prepend(tr); }
    else body.append(tr);
  }
  async function load(before) {
    const data = await api("GET", `/api/activity?${listParams(before)}`);
    if (!data.ok) { say(`Could not load activity: ${data.error}`, true); return; }
    for (const row of data.events) add(row, { prepend: false });
    next = data.next;
    older.hidden = next === null || next === undefined;
    count();
  }
  function exportLink() {
    const p = listParams();
    p.set("limit", "1000");
    $("#export").href = `/api/activity?${p}`;
  }
  async function apply() {
    body.replaceChildren();
    rows.clear();
    exportLink();
    say("");
    await load();
    if (source) source.close();
    // a bounded window ("until") is history: nothing new can belong to it
    if (!form.elements.before.value) {
      source = live(params().toString(), (row) => { add(row, { prepend: true }); count(); });
    } else { $("#live").textContent = "not live (an end time is set)"; $("#live").className = "live"; }
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); apply(); });
  form.elements.q.addEventListener("input", () => {
    for (const tr of body.children) tr.hidden = !matchesSearch(rows.get(Number(tr.dataset.id)) || {});
    count();
  });
  older.addEventListener("click", () => load(next));
  await apply();
}

function showDetails(row) {
  const list = $("#details-list");
  const data = row.data || {};
  const items = [
    ["Row", row.id], ["Time", when(row.time)], ["Completed", when(row.completed_at)], ["From", row.from],
    ["Type", row.type], ["Target", row.target], ["Result", row.result], ["Via", row.via],
    ["Duration", row.duration_ms !== null && row.duration_ms !== undefined ? `${row.duration_ms} ms` : null],
    ["Exit code", row.exit_code], ["Thread", row.thread], ["Event id", row.event_id],
  ];
  list.replaceChildren();
  for (const [label, value] of items) {
    if (value === null || value === undefined || value === "") continue;
    list.append(el("dt", {}, label), el("dd", {}, String(value)));
  }
  list.append(el("dt", {}, "Detail"), el("dd", {}, el("pre", {}, row.detail || "")));
  if (data.approval_id) {
    list.append(el("dt", {}, "Approval"), el("dd", {}, el("a", { href: `/ui/approvals#a-${data.approval_id}` }, data.approval_id)));
  }
  if (data.snapshot) {
    list.append(el("dt", {}, "Snapshot"), el("dd", {}, el("a", { href: `/ui/containers#c-${row.target}` }, data.snapshot)));
  }
  if (data.job_id) {
    // a background job keeps its output: the API's answer for it, read with this session
    list.append(el("dt", {}, "Job"), el("dd", {}, el("a", { href: `/api/jobs/${encodeURIComponent(data.job_id)}` }, `${data.job_id} (state and output)`)));
  }
  const rest = Object.fromEntries(Object.entries(data).filter(([k]) => !["approval_id", "snapshot", "job_id"].includes(k)));
  if (Object.keys(rest).length) list.append(el("dt", {}, "Data"), el("dd", {}, el("pre", {}, JSON.stringify(rest, null, 2))));
  $("#details").showModal();
}

// ---- permissions ----------------------------------------------------------------------------
const CAPS = [["exec", "x"], ["file_read", "r"], ["file_write", "w"]];

function ruleAsks(rule) {
  // ask-level capabilities, when the policy keeps them on the rule (approvals)
  const ask = rule && (rule.ask || rule.ask_capabilities);
  return Array.isArray(ask) ? ask : ask === true ? rule.capabilities || [] : [];
}

async function permissionsPage() {
  const grid = $("#grid");
  const effectiveBox = $("#effective");
  const dialog = $("#edit");
  let view = null;

  function cellContent(caps, asks, rule) {
    const parts = CAPS.map(([cap, letter]) => {
      const state = asks.includes(cap) ? "ask" : caps.includes(cap) ? "allowed" : "none";
      return el("span", { class: `cap ${state}`, title: `${cap}: ${state === "none" ? "not granted" : state}` }, letter);
    });
    if (rule && rule.expires_at) parts.push(el("span", { class: "tag", title: `expires ${rule.expires_at}` }, "~"));
    if (rule && (rule.snapshot_before || rule.snapshot === "before")) parts.push(el("span", { class: "tag" }, "snap"));
    if (rule && rule.expired) parts.push(el("span", { class: "tag" }, "expired"));
    return parts;
  }
  function describe(source, target, caps, asks, rule) {
    const words = CAPS.map(([cap]) => `${cap} ${asks.includes(cap) ? "ask" : caps.includes(cap) ? "allowed" : "not granted"}`);
    return `${source} to ${target}: ${words.join(", ")}${rule && rule.expires_at ? `, expires ${rule.expires_at}` : ""}`;
  }
  function render() {
    const rules = new Map(view.permissions.map((r) => [`${r.source}|${r.target}`, r]));
    const names = view.nodes;
    const axis = ["*", ...names];
    const effective = effectiveBox.checked;
    const head = el("tr", {}, el("th", { scope: "col" }, "source ↓ / target →"),
      ...axis.map((t) => el("th", { scope: "col" }, t)));
    const body = (effective ? names : axis).map((source) => el("tr", {},
      el("th", { scope: "row" }, source),
      ...axis.map((target) => {
        if (effective) {
          if (target === "*") return el("td", {}, "");
          const caps = (view.effective[source] || {})[target] || [];
          const asks = ((view.effective_ask || {})[source] || {})[target] || [];
          return el("td", { "aria-label": describe(source, target, caps, asks, null) }, ...cellContent(caps, asks, null));
        }
        const rule = rules.get(`${source}|${target}`);
        const caps = rule && !rule.expired ? rule.capabilities : [];
        const label = rule ? describe(source, target, caps, ruleAsks(rule), rule) : `${source} to ${target}: no rule of its own`;
        return el("td", {}, el("button", { type: "button", "aria-label": `${label}. Edit`,
          "data-source": source, "data-target": target, onclick: () => edit(source, target, rule) },
          ...(rule ? cellContent(caps, ruleAsks(rule), rule) : [el("span", { class: "tag" }, "·")])));
      })));
    grid.replaceChildren(el("caption", {}, effective ? "Effective access (after wildcards and expiry)" : "Rules (sources × targets)"),
      el("thead", {}, head), el("tbody", {}, ...body));
  }
  async function load() {
    const data = await api("GET", "/api/permissions?effective=true");
    if (!data.ok) { say(`Could not load permissions: ${data.error}`, true); return; }
    view = data;
    showUnavailable(data.unavailable);
    render();
  }
  async function edit(source, target, rule) {
    const form = $("#edit-form");
    $("#edit-title").textContent = `${source} → ${target}`;
    const live = rule && !rule.expired;
    for (const box of form.elements.cap) box.checked = live ? rule.capabilities.includes(box.value) : false;
    for (const box of form.elements.ask) box.checked = live ? ruleAsks(rule).includes(box.value) : false;
    form.elements.snapshot.checked = !!(live && rule.snapshot === "before");
    form.elements.expires.value = "";
    $("#edit-inherit").hidden = !rule;
    dialog.returnValue = "";
    dialog.showModal();
    await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
    const choice = dialog.returnValue;
    if (choice !== "save" && choice !== "inherit") return;
    const asks = [...form.elements.ask].filter((b) => b.checked).map((b) => b.value);
    // asking first is a way of granting: an ask-level capability is granted too
    const caps = [...form.elements.cap].filter((b) => b.checked || asks.includes(b.value)).map((b) => b.value);
    const snapshot = form.elements.snapshot.checked;
    const expires = form.elements.expires.value.trim();
    let body, sentence;
    if (choice === "inherit") {
      body = { source, target, allow: false, inherit: true };
      sentence = `Remove the rule ${source} → ${target}? The pair then follows the wildcard rules.`;
    } else if (!caps.length) {
      body = { source, target, allow: false };
      sentence = target === "*" ? `Revoke every rule of ${source}?` : `Deny ${source} → ${target} everything?`;
    } else {
      body = { source, target, allow: true, capabilities: caps };
      if (asks.length) body.ask = asks;
      if (snapshot) body.snapshot = "before";
      if (expires) body.expires = expires;
      const plain = caps.filter((c) => !asks.includes(c));
      sentence = `Grant ${source} → ${target}: ${plain.length ? plain.join(", ") : "nothing outright"}`
        + `${asks.length ? `; ask first for ${asks.join(", ")}` : ""}${snapshot ? "; snapshot before each action" : ""}`
        + `${expires ? ` until ${expires}` : ""}?`;
    }
    if (!(await confirmAction("Change a pathway", sentence, "Apply"))) { say("Nothing changed."); return; }
    const data = await act(`${source} → ${target}`, "POST", "/api/permit", body);
    if (data.ok) await load();
  }
  effectiveBox.addEventListener("change", render);
  await load();
  live("type=permit", debounce(load, 300));
}

// ---- approvals ------------------------------------------------------------------------------
function particulars(a) {
  const p = a.particulars || {};
  return Object.entries(p).filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [k, typeof v === "string" ? v : JSON.stringify(v)]);
}

async function refreshPendingCount() {
  const badgeNode = $("#pending-count");
  if (!badgeNode) return;
  const data = await api("GET", "/api/approvals?state=pending").catch(() => null);
  const n = data && data.ok ? (data.approvals || []).length : 0;
  badgeNode.hidden = !n;
  badgeNode.textContent = String(n);
  badgeNode.setAttribute("aria-label", `${n} pending`);
}

async function approvalsPage() {
  const pending = $("#pending");
  const history = $("#history tbody");
  async function decide(a, decision, forPeriod) {
    const body = { decision };
    if (forPeriod) body.for = forPeriod;
    const label = `${decision === "deny" ? "Deny" : forPeriod ? "Approve for 1 h" : "Approve once"}: ${a.requester} ${a.action || a.kind} on ${a.target || "—"}`;
    await act(label, "POST", `/api/approvals/${encodeURIComponent(a.id)}`, body);
    await load();
  }
  function card(a) {
    return el("article", { class: "card", id: `a-${a.id}`, "aria-label": `approval ${a.id}` },
      el("h3", {}, badge("pending", "s"), `${a.requester} → ${a.target || "—"}`),
      el("p", {}, `${a.kind === "agent_tool" ? "Tool" : "Action"}: ${a.action || (a.particulars || {}).tool_name || a.kind}`),
      el("dl", {}, ...particulars(a).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, el("pre", {}, v))]),
        el("dt", {}, "asked"), el("dd", {}, when(a.created_at)),
        el("dt", {}, "expires"), el("dd", {}, when(a.expires_at))),
      el("div", { class: "buttons" },
        el("button", { type: "button", class: "primary", onclick: () => decide(a, "approve") }, "Approve once"),
        el("button", { type: "button", onclick: () => decide(a, "approve", "1h") }, "Approve for 1 h"),
        el("button", { type: "button", class: "danger", onclick: () => decide(a, "deny") }, "Deny")));
  }
  async function load() {
    const data = await api("GET", "/api/approvals");
    if (!data.ok) { say(`Could not load approvals: ${data.error}`, true); pending.replaceChildren(); return; }
    const all = data.approvals || [];
    const waiting = all.filter((a) => a.state === "pending");
    const done = all.filter((a) => a.state !== "pending")
      .sort((x, y) => (y.created_at || "").localeCompare(x.created_at || ""));
    pending.replaceChildren(...(waiting.length ? waiting.map(card) : [el("p", {}, "Nothing waits for a decision.")]));
    history.replaceChildren(...done.slice(0, 200).map((a) => el("tr", { id: `a-${a.id}` },
      el("td", {}, when(a.created_at)), el("td", {}, a.requester),
      el("td", { class: "detail" }, `${a.action || a.kind}${particulars(a).length ? ": " + particulars(a).map(([, v]) => v).join(" · ") : ""}`),
      el("td", {}, a.target || "—"), el("td", {}, badge(a.state, "s")),
      el("td", {}, a.decided_by || "—"), el("td", {}, a.decided_via || "—"))));
    refreshPendingCount();
  }
  await load();
  live("type=approval", debounce(load, 150));
}

// ---- containers -----------------------------------------------------------------------------
async function containersPage() {
  const box = $("#containers");
  async function snapshots(name, list) {
    const data = await api("GET", `/api/container/snapshots?name=${encodeURIComponent(name)}`);
    if (!data.ok) { list.replaceChildren(el("li", {}, `snapshots unavailable: ${data.error}`)); return; }
    const snaps = data.snapshots || [];
    list.replaceChildren(...(snaps.length ? snaps.map((s) => el("li", {},
      `${s.name} (${when(s.createdAt)}${s.expiresAt ? `, expires ${when(s.expiresAt)}` : ""}) `,
      el("button", { type: "button", "aria-label": `Restore ${name} to ${s.name}`, onclick: () => op(name, "restore", s.name) }, "Restore…")))
      : [el("li", {}, "no snapshots")]));
  }
  async function op(name, what, snapshot) {
    if (what === "stop" && !(await confirmAction(`Stop ${name}?`,
      `${name} stops now: every process in it ends and agents lose it until it is started again.`, `Stop ${name}`))) return;
    if (what === "restore" && !(await confirmAction(`Restore ${name}?`,
      `${name} goes back to snapshot ${snapshot}: everything written since is lost.`, `Restore ${name}`))) return;
    const body = { name };
    if (snapshot) body.snapshot = snapshot;
    await act(`${what} ${name}${snapshot ? " " + snapshot : ""}`, "POST", `/api/container/${what}`, body);
    await load();
  }
  function card(m) {
    const list = el("ul", { "aria-label": `snapshots of ${m.name}` }, el("li", {}, "loading…"));
    const snapName = el("input", { id: `snap-${m.name}`, maxlength: 63, placeholder: "today's date", spellcheck: "false" });
    const running = m.state === "running";
    const c = el("article", { class: "card", id: `c-${m.name}`, "data-node": m.name },
      el("h3", {}, m.name, badge(m.state, "s")),
      el("div", { class: "buttons" },
        el("button", { type: "button", disabled: running, onclick: () => op(m.name, "start") }, "Start"),
        el("button", { type: "button", class: "danger", disabled: !running, onclick: () => op(m.name, "stop") }, "Stop…")),
      el("div", { class: "buttons" },
        el("label", { for: `snap-${m.name}` }, "Snapshot name"), snapName,
        el("button", { type: "button", onclick: () => op(m.name, "snapshot", snapName.value.trim() || null) }, "Snapshot")),
      el("h4", {}, "Snapshots"), list);
    snapshots(m.name, list);
    return c;
  }
  async function load() {
    const data = await api("GET", "/api/machines");
    if (!data.ok) { say(`Could not load containers: ${data.error}`, true); return; }
    showUnavailable(data.unavailable);
    const containers = data.machines.filter((m) => (m.capabilities || []).includes("container"));
    box.replaceChildren(...(containers.length ? containers.map(card) : [el("p", {}, "No containers.")]));
  }
  await load();
  // listing snapshots is itself recorded as a container row: reacting to those would loop
  const reload = debounce(load, 300);
  live("type=container", (row) => { if (!(row.detail || "").startsWith("list_snapshots")) reload(); });
}

const PAGES = { machines: machinesPage, activity: activityPage, permissions: permissionsPage,
  approvals: approvalsPage, containers: containersPage };
if (PAGES[PAGE]) {
  PAGES[PAGE]().catch((e) => say(`The page could not load: ${e.message}`, true));
  if (PAGE !== "approvals") refreshPendingCount().catch(() => {});
}
