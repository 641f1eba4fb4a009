// Instances of the chosen namespace across clusters: status, agent, first and last
// seen, revisions and online nodes; "Configure" switches the console to one of them.
// A platform admin moves an instance to another namespace here.

import * as api from '../api.js';
import { h, replace, table, errorBox, badge, when, toast } from '../dom.js';

/** @param {import('../app.js').Ctx} ctx */
export async function renderInstances(ctx) {
  const ns = api.namespace();
  const listed = await api.get(`/namespaces/${encodeURIComponent(ns)}/instances`);
  const status = h('div', { 'aria-live': 'polite' });
  const platform = ctx.me.user.platform_admin;
  const rows = listed.items.map((/** @type {any} */ i) => {
    const href = `#/i/${encodeURIComponent(i.cluster)}/${encodeURIComponent(i.name)}`;
    const synced = i.applied_revision === i.revision;
    let move = null;
    if (platform) {
      const select = h(
        'select',
        { 'aria-label': `namespace of ${i.cluster}/${i.name}` },
        ctx.namespaces.map((n) => h('option', { value: n.id }, n.name)),
      );
      select.value = i.namespace;
      select.addEventListener('change', async () => {
        try {
          await api.call('PUT', `${api.instancePath(i)}/namespace`, { body: { namespace: select.value } });
          toast(`Moved ${i.cluster}/${i.name} to ${select.value}`);
          await renderInstances(ctx);
        } catch (e) {
          select.value = i.namespace;
          replace(status, errorBox(e));
        }
      });
      move = select;
    }
    return [
      h('a', { href }, h('strong', null, i.name)),
      i.cluster,
      h('code', null, i.agent_address),
      move ?? i.namespace,
      i.status === 'online' ? badge('online', 'ok') : badge(i.status, 'bad'),
      when(i.first_seen),
      when(i.last_seen),
      h('span', null, `r${i.revision}`, ' ', synced ? badge('in store', 'ok') : badge(`store r${i.applied_revision ?? '?'}`, 'warn')),
      String(i.online_nodes),
      h('a', { href, class: 'button' }, 'Configure'),
    ];
  });
  replace(
    ctx.view,
    h('h1', null, 'Instances'),
    h('p', { class: 'hint' }, 'Gateway instances of this namespace in every cluster, as their agents report them. Nodes that share an instance name in a cluster are one instance.'),
    status,
    table(['Instance', 'Cluster', 'Agent', 'Namespace', 'Status', 'First seen', 'Last seen', 'Revision', 'Online nodes', ''], rows, 'No instance in this namespace yet: register a cluster whose agent manages one.', 'instances'),
  );
}
