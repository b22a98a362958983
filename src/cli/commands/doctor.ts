/** `sevtrack doctor`: what this host offers (KVM, its flavour and capabilities, SEV) and what sevtrack will use. */
import type { Command } from 'commander';
import { doctorReport, formatDoctorReport } from '../../vmm/kvm/doctor-report.js';
import { runAction } from '../run-action.js';

export function registerDoctor(program: Command): void {
  program
    .command('doctor')
    .description(
      'report what this host offers (KVM present and usable, PVM or VMX/SVM, capabilities, SEV) and what sevtrack will use',
    )
    .option('--json', 'print one JSON object')
    .action(
      runAction((opts: { json?: boolean }) => {
        const report = doctorReport();
        process.stdout.write(opts.json ? `${JSON.stringify(report)}\n` : formatDoctorReport(report));
        return 0;
      }),
    );
}
