// Loaded before the SDK (node --import): appends the body of every answer the SDK
// gets to the file KH_RAW, so that the test can search them all for secrets.
import fs from "node:fs";

const file = process.env.KH_RAW;
const fetch = globalThis.fetch;
globalThis.fetch = async (...args) => {
  const response = await fetch(...args);
  if (file) fs.appendFileSync(file, `${await response.clone().text()}\n`);
  return response;
};
