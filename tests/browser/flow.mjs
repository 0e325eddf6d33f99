// Walks headless Chromium (Debian's, never a downloaded one) through keyhaven's
// pages: fills what the plan says, presses the page's submit button, and takes a
// screenshot of every page, until a page says plan.doneText.
//
//   node flow.mjs '{"start": URL, "doneText": "...", "fill": {"label:API Key": "..."},
//                   "out": DIR, "name": "connect-form"}'
//
// Fill keys: "label:TEXT" finds an input by its accessible label, anything else is
// a CSS selector; a missing field is skipped. Prints one JSON line: the last page's
// url, title and text, and the screenshots taken.
import { chromium } from 'playwright-core';

const plan = JSON.parse(process.argv[2]);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
});
const shots = [];
try {
  const page = await browser.newPage();
  await page.goto(plan.start, { waitUntil: 'load' });
  for (let step = 0; ; step++) {
    const shot = `${plan.out}/${plan.name}-${step}.png`;
    await page.screenshot({ path: shot, fullPage: true });
    shots.push(shot);
    const text = (await page.textContent('body')) || '';
    if (text.includes(plan.doneText)) {
      console.log(JSON.stringify({ url: page.url(), title: await page.title(), text: text.trim(), shots }));
      break;
    }
    if (step >= 10) throw new Error(`never reached "${plan.doneText}"; last page ${page.url()}: ${text.slice(0, 400)}`);
    for (const [key, value] of Object.entries(plan.fill || {})) {
      const field = key.startsWith('label:') ? page.getByLabel(key.slice(6)) : page.locator(key);
      if (await field.count()) await field.first().fill(value);
    }
    const button = page.locator('button[type=submit], button:not([type])').first();
    if (!(await button.count())) throw new Error(`no button at ${page.url()}: ${text.slice(0, 400)}`);
    await Promise.all([page.waitForEvent('framenavigated'), button.click()]);
    await page.waitForLoadState('load');
  }
} finally {
  await browser.close();
}
